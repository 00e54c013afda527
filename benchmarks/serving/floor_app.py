"""The floor: a bare ASGI app on the same server stack (uvicorn + uvloop + httptools).

It reads the request body (as every real server must) and answers a constant
v2-shaped JSON reply, so it measures what the HTTP stack alone costs.
"""

BODY = b'{"model_name":"bench","outputs":[{"name":"predict","shape":[1],"datatype":"INT64","data":[1]}]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]


async def app(scope, receive, send):
    if scope["type"] != "http":  # lifespan: nothing to set up
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return
    more_body = True
    while more_body:
        message = await receive()
        more_body = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
