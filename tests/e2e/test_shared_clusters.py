"""Route hosts mapped to one app share one Envoy cluster in the real router: two hosts of one process both
answer from the app, and the router has one outbound cluster for it (the process's service), which stays
while one host is left and goes after the last (issue 14: N hosts of an app used to cost N clusters): the
last host's route at once, the cluster once the copilot job's mcp.service_removal_delay_seconds (30 s by
default) passed."""

from __future__ import annotations

from devtools.cell import CellInstance
from devtools.tier import Tier, wait_until


def _clusters_with(tier: Tier, instance: CellInstance) -> set[str]:
    """The router's outbound clusters that have the instance (its container proxy) as an endpoint."""
    address = f"{instance.cell_ip}:{instance.host_tls_proxy_port}"
    return {
        line.split("::")[0]
        for line in tier.envoy.clusters().splitlines()
        if line.startswith("outbound|") and line.split("::")[1:2] == [address]
    }


def test_hosts_of_one_app_share_one_cluster_until_the_last_is_unmapped(tier: Tier, apps, unique) -> None:
    process = f"{unique}-pg"
    one, two = f"{unique}-one.example.com", f"{unique}-two.example.com"
    tier.bbs.desire_lrp(process, http_routes=[{"hostnames": [one, two], "port": 8080}])
    instance = tier.start_instance(process, 0, f"{unique}-i0")
    apps.append(instance)
    tier.wait_for_every_instance(one, [f"{unique}-i0"])
    tier.wait_for_every_instance(two, [f"{unique}-i0"])

    [cluster] = tier.envoy.route_clusters(one)
    assert tier.envoy.route_clusters(two) == [cluster]
    assert cluster.startswith("outbound|") and cluster.endswith(".copilot.internal")
    assert _clusters_with(tier, instance) == {cluster}  # one cluster for the process, not one per host

    # The first host unmapped (Cloud Controller updates the DesiredLRP's routes): the other still answers.
    tier.bbs.desire_lrp(process, http_routes=[{"hostnames": [two], "port": 8080}])
    wait_until(lambda: tier.get(one).status_code == 404, timeout=20, message=f"{one} to be unknown")
    assert tier.get(two).text.strip() == f"{unique}-i0"
    assert tier.envoy.route_clusters(two) == [cluster]
    assert _clusters_with(tier, instance) == {cluster}

    # The last one unmapped: its route goes at once, the cluster once its removal is due (the app still runs).
    tier.bbs.desire_lrp(process, http_routes=[])
    wait_until(lambda: tier.get(two).status_code == 404, timeout=20, message=f"{two} to be unknown")
    held = lambda: {line.split("::")[0] for line in tier.envoy.clusters().splitlines()}  # noqa: E731
    assert cluster in held()  # kept for the delay (istiod's push of a removed service is costly)
    wait_until(lambda: cluster not in held(), timeout=60, message="the process's cluster to go")
    assert not _clusters_with(tier, instance)
