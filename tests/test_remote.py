"""The command line's API commands, run against a live app on real Redis and Postgres."""

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from tests.conftest import API_KEY, BROWSER
from tracker.cli import app
from tracker.devstack import free_port
from tracker.domain.campaign import new_campaign_key


class Cli:
    def __init__(self, url: str) -> None:
        self.url = url
        self.runner = CliRunner()

    async def __call__(self, *args: str, key: str | None = API_KEY, code: int = 0) -> Result:
        """Run `tracker ARGS` in a thread (it runs its own event loop), as a user would."""
        options = ["--url", self.url, *(["--api-key", key] if key else [])]
        result = await asyncio.to_thread(self.runner.invoke, app, [*options, *args], env={})
        assert result.exit_code == code, (result.exit_code, result.output, result.exception)
        return result

    async def json(self, *args: str) -> Any:
        return json.loads((await self(*args, "--format", "json")).stdout)


@pytest.fixture
def cli(client: Any) -> Cli:
    return Cli(str(client.make_url("")).rstrip("/"))


async def _set_up(cli: Cli) -> dict[str, Any]:
    network = (await cli.json("networks", "create", "--name", "Net A"))[0]
    source = (await cli.json("sources", "create", "--name", "Src A"))[0]
    offer = (
        await cli.json(
            "offers",
            "create",
            "--name",
            "Offer A",
            "--url",
            "https://offer.example/?c={clickid}",
            "--network",
            str(network["id"]),
            "--payout",
            "2.50",
        )
    )[0]
    campaign = (
        await cli.json(
            "campaigns",
            "create",
            "--name",
            "Camp A",
            "--source",
            str(source["id"]),
            "--offer",
            f"{offer['id']}:70",
            "--set",
            "attribution_window_days=7",
        )
    )[0]
    return {"network": network, "source": source, "offer": offer, "campaign": campaign}


async def test_create_list_and_show_every_resource(cli):
    made = await _set_up(cli)
    campaign = made["campaign"]
    assert campaign["offers"] == [{"offer_id": made["offer"]["id"], "weight": 70}]
    assert campaign["attribution_window_days"] == 7
    assert campaign["click_url"].endswith(f"/c/{campaign['key']}")
    lander = (
        await cli.json("landers", "create", "--name", "LP 1", "--url", "https://lp.example/")
    )[0]
    for group, name in [
        ("campaigns", "Camp A"),
        ("offers", "Offer A"),
        ("sources", "Src A"),
        ("networks", "Net A"),
        ("landers", "LP 1"),
    ]:
        table = await cli(group, "list")
        assert name in table.stdout, (group, table.stdout)
        rows = await cli.json(group, "list")
        assert [row["name"] for row in rows] == [name]
        csv_lines = (await cli(group, "list", "--format", "csv")).stdout.splitlines()
        assert {"id", "name"} <= set(csv_lines[0].split(",")) and name in csv_lines[1]
    shown = await cli("landers", "show", str(lander["id"]))
    assert "https://lp.example/" in shown.stdout and "name" in shown.stdout


async def test_urls_by_key_and_by_id(cli):
    made = await _set_up(cli)
    campaign, network = made["campaign"], made["network"]
    for ref in (campaign["key"], str(campaign["id"])):
        out = (await cli("urls", ref)).stdout.splitlines()
        assert out[0] == "click URL (Camp A):"
        assert out[1].strip() == campaign["click_url"]
        assert out[2] == "postback URL for Net A:"
        assert out[3].strip() == network["postback_url"]
        assert "token=" in out[3]
    missing = await cli("urls", "no-such-key", code=1)
    assert missing.stderr.strip() == "error: no campaign with id or key 'no-such-key'"


async def test_urls_for_a_key_that_looks_like_an_option(cli, pool):
    """Keys made before keys began with a letter or digit may begin with '-': after `--`
    the command reads them as the key."""
    campaign = (await _set_up(cli))["campaign"]
    await pool.execute("UPDATE campaigns SET key = '-dash_Key' WHERE id = $1", campaign["id"])
    out = (await cli("urls", "--", "-dash_Key")).stdout.splitlines()
    assert out[1].strip().endswith("/c/-dash_Key")
    assert (await cli("urls", "-dash_Key", code=2)).exit_code == 2


def test_new_campaign_keys_never_look_like_an_option():
    keys = {new_campaign_key() for _ in range(5000)}
    assert len(keys) == 5000
    assert all(len(k) == 12 and k[0].isalnum() for k in keys)


async def test_report_and_postback_log(cli, client):
    made = await _set_up(cli)
    resp = await client.get(
        f"/c/{made['campaign']['key']}", allow_redirects=False, headers={"User-Agent": BROWSER}
    )
    click_id = resp.headers["Location"].rsplit("=", 1)[1]
    token = made["network"]["postback_token"]
    resp = await client.get("/postback", params={"clickid": click_id, "txid": "t1", "token": token})
    assert resp.status == 200
    today = datetime.now(UTC).date().isoformat()
    answer = await cli.json("report", "--from", today, "--to", today, "--group-by", "campaign")
    [row] = answer["rows"]
    assert (row["campaign_name"], row["conversions"], row["revenue"]) == ("Camp A", 1, "2.50")
    table = (await cli("report", "--from", today, "--to", today)).stdout
    assert "Camp A" in table and "total" in table and "2.50" in table
    csv_text = (await cli("report", "--from", today, "--to", today, "--format", "csv")).stdout
    assert csv_text.splitlines()[0].startswith("campaign_id,campaign_name,")
    bad = await cli("report", "--from", today, "--to", today, "--group-by", "colour", code=1)
    assert bad.stderr.startswith("error: ") and "group_by" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1

    tail = await cli("postbacks", "tail", "--no-follow")
    [line] = tail.stdout.splitlines()
    assert "created" in line and click_id in line
    assert (await cli("postbacks", "tail", "--no-follow", "--result", "unmatched")).stdout == ""


async def test_api_errors_are_one_line_and_exit_1(cli):
    wrong_key = await cli("campaigns", "list", key="nope", code=1)
    assert wrong_key.stderr == "error: missing or wrong API key [HTTP 401]\n"
    no_key = await cli("offers", "list", key=None, code=1)
    assert "missing or wrong API key" in no_key.stderr
    invalid = await cli(
        "offers", "create", "--name", "x", "--url", "ftp://x", "--network", "1", code=1
    )
    assert invalid.stderr.startswith("error: ") and "url:" in invalid.stderr
    assert len(invalid.stderr.splitlines()) == 1
    missing = await cli("campaigns", "show", "999", code=1)
    assert "[HTTP 404]" in missing.stderr
    unreachable = Cli(f"http://127.0.0.1:{free_port()}")
    down = await unreachable("campaigns", "list", code=1)
    assert down.stderr.startswith(f"error: cannot reach {unreachable.url}")
    bad_weight = await cli(
        "campaigns", "create", "--name", "c", "--source", "1", "--offer", "x:y", code=2
    )
    assert "ID or ID:WEIGHT" in bad_weight.stderr


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["campaigns"],
        ["campaigns", "create"],
        ["offers", "list"],
        ["sources", "show"],
        ["networks", "create"],
        ["landers", "list"],
        ["report"],
        ["urls"],
        ["postbacks", "tail"],
        ["serve"],
        ["sink"],
        ["migrate"],
        ["maintain"],
    ],
)
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
