"""The xDS side: versioned resource snapshots and the ADS server istiod reads them from. Knows nothing of Cloud Foundry."""
