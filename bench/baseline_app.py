"""The baseline: a bare aiohttp app on the tracker's event loop settings that answers a click
URL with a 302. It is also the delivery phase's postback receiver: any other request gets 200."""

import asyncio
import sys

import uvloop
from aiohttp import web

LOCATION = "https://offer.example.com/lp?clickid=06h2febtl4koih7i2v8am4t9j6rmo&campaign=1"


async def redirect(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": LOCATION})


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_get("/c/{campaign_key}", redirect)
    app.router.add_route("*", "/{tail:.*}", accept)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop
    )


if __name__ == "__main__":
    main()
