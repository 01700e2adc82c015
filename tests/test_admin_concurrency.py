"""Admin updates without lost updates: row locks for merges, ETag / If-Match for clients."""

import asyncio

from tests.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def test_get_patch_and_if_match(api, client):
    source = await api.create("/api/traffic-sources", {"name": "S"})
    path = f"/api/traffic-sources/{source['id']}"
    resp = await client.get(path, headers=AUTH)
    tag = resp.headers["ETag"]
    assert tag.startswith('"') and tag.endswith('"')
    resp = await client.patch(path, headers={**AUTH, "If-Match": tag}, json={"name": "S2"})
    assert resp.status == 200
    new_tag = resp.headers["ETag"]
    assert new_tag != tag
    assert (await client.get(path, headers=AUTH)).headers["ETag"] == new_tag
    # The old version no longer matches: nothing is written.
    resp = await client.patch(path, headers={**AUTH, "If-Match": tag}, json={"name": "S3"})
    assert resp.status == 412
    body = await resp.json()
    assert body["error"] == "precondition failed: the traffic source changed since it was read"
    assert body["details"] == [{"field": "If-Match", "message": f"current ETag is {new_tag}"}]
    assert (await api.call("GET", path))["name"] == "S2"
    # A list of tags, or any version at all.
    resp = await client.patch(
        path, headers={**AUTH, "If-Match": f'"x", {new_tag}'}, json={"name": "S4"}
    )
    assert resp.status == 200
    resp = await client.patch(path, headers={**AUTH, "If-Match": "*"}, json={"name": "S5"})
    assert resp.status == 200
    resp = await client.patch(
        "/api/traffic-sources/999", headers={**AUTH, "If-Match": "*"}, json={"name": "x"}
    )
    assert resp.status == 404


async def test_concurrent_patches_of_different_fields_all_survive(api, client):
    network = await api.create("/api/affiliate-networks", {"name": "N"})
    path = f"/api/affiliate-networks/{network['id']}"
    changes = [
        ("name", lambda i: f"name-{i}"),
        ("duplicate_policy", lambda i: "ignore" if i % 2 else "accept"),
        ("require_token", lambda i: False),
        ("ip_allowlist", lambda i: [f"10.0.0.{i}/32"]),
        ("signing_secret", lambda i: f"secret-{i:02d}-0123456789"),
    ]
    patches = [{field: value(i)} for i in range(4) for field, value in changes]
    assert len(patches) == 20
    bodies = await asyncio.gather(*(api.call("PATCH", path, json=p) for p in patches))
    final = await api.call("GET", path)
    for field, value in changes:
        assert final[field] in [value(i) for i in range(4)], field
    # Each PATCH saw every earlier one: the fields it did not set are never the originals.
    committed = sorted(bodies, key=lambda b: b["updated_at"])
    assert committed[-1] == final
    assert committed[-1]["require_token"] is False


async def test_concurrent_read_modify_write_with_if_match(api, client):
    network = await api.create("/api/affiliate-networks", {"name": "N"})
    offers = [
        await api.create(
            "/api/offers",
            {"name": f"O{i}", "url": "https://o.example/", "affiliate_network_id": network["id"]},
        )
        for i in range(20)
    ]
    source = await api.create("/api/traffic-sources", {"name": "S"})
    campaign = await api.create(
        "/api/campaigns",
        {
            "name": "C",
            "traffic_source_id": source["id"],
            "offers": [{"offer_id": o["id"], "weight": 1} for o in offers],
        },
    )
    path = f"/api/campaigns/{campaign['id']}"
    conflicts = 0

    async def set_weight(i):
        nonlocal conflicts
        while True:
            resp = await client.get(path, headers=AUTH)
            current, tag = await resp.json(), resp.headers["ETag"]
            weights = [
                {**o, "weight": 100 + i} if o["offer_id"] == offers[i]["id"] else o
                for o in current["offers"]
            ]
            resp = await client.patch(
                path, headers={**AUTH, "If-Match": tag}, json={"offers": weights}
            )
            if resp.status == 200:
                return
            assert resp.status == 412, await resp.text()
            conflicts += 1

    await asyncio.wait_for(asyncio.gather(*(set_weight(i) for i in range(20))), 25)
    final = await api.call("GET", path)
    assert [o["weight"] for o in final["offers"]] == [100 + i for i in range(20)]
    print(f"20 concurrent read-modify-write PATCHes: all applied, {conflicts} retried after 412")
