"""Copilot: turns Cloud Foundry routing state (Diego BBS, Cloud Controller, platform routes) into Istio config for istiod."""
