"""The web view (SPEC 14): a Starlette app, served by uvicorn, that shows sessions as
people read them and acts on them through the spool like any other client.

`app` builds the ASGI application, `conversation` turns log lines into what a page
shows (pure), `pages` reads logs a screenful at a time and follows them live,
`guard` holds the security rules, `server` runs it (`cairnd web`, or inside `cairnd serve`).
"""
