async def test_health(api):
    body = await api.call("GET", "/api/traffic-sources")
    assert body["items"] == []
