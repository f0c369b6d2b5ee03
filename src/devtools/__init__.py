"""Developer and test tooling for Copilot: throwaway PKI and other helpers that never ship."""
