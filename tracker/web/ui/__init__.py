"""The dashboard at /ui: a sub-application with its own middlewares (session, CSRF,
security headers), so the click and postback paths pay nothing for it."""

from aiohttp import web

from tracker.web.ui import editors, logs, reports, session
from tracker.web.ui.render import static


def create_ui_app() -> web.Application:
    """The dashboard, to mount at /ui; it reads what the main app opened (pool, Redis)."""
    # Its middlewares (session, CSRF, HTML errors) run inside its routes: see create_app.
    ui = web.Application()
    router = ui.router
    router.add_get("/static/{name}", static)
    router.add_get("/login", session.login_form)
    router.add_post("/login", session.login)
    router.add_post("/logout", session.logout)
    router.add_get("/", reports.campaigns_page)
    router.add_get("/campaigns/{id:[0-9]+}", reports.drilldown_page)
    router.add_get("/urls", logs.urls_page)
    router.add_get("/postbacks", logs.postbacks_page)
    router.add_get("/deliveries", logs.deliveries_page)
    router.add_post("/deliveries/replay", logs.replay_deliveries)
    router.add_post("/deliveries/{id}/retry", logs.retry_delivery)
    kinds = "{kind:sources|networks|offers|landers|campaigns}"
    router.add_get(f"/{kinds}", editors.list_page)
    router.add_get(f"/{kinds}/new", editors.new_form)
    router.add_post(f"/{kinds}/new", editors.save)
    router.add_get(f"/{kinds}/{{id:[0-9]+}}/edit", editors.edit_form)
    router.add_post(f"/{kinds}/{{id:[0-9]+}}/edit", editors.save)
    return ui
