# A keep-alive HTTP/1.1 server on non-blocking sockets (asyncio) for Moat's HTTP tests:
# `python3 http_server.py PORT LOG [ADDRESS]` answers every request 200 with
# "ok METHOD PATH BODY-LENGTH" and appends "METHOD PATH BODY-LENGTH" to LOG.
# Why not http.server: see docs/http.md (a blocking server can get one spurious EAGAIN
# from the kernel for a request that arrived before accept()).
import asyncio, sys
async def handle(r, w):
    try:
        while True:
            line = await r.readline()
            if not line:
                break
            method, path, _ = line.decode().split(" ", 2)
            headers = {}
            while True:
                h = await r.readline()
                if h in (b"\r\n", b""):
                    break
                k, v = h.decode().split(":", 1)
                headers[k.strip().lower()] = v.strip()
            body = b""
            if "content-length" in headers:
                body = await r.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int((await r.readline()).strip(), 16)
                    if size == 0:
                        await r.readline()
                        break
                    body += await r.readexactly(size)
                    await r.readline()
            with open(sys.argv[2], "a") as f:
                f.write(f"{method} {path} {len(body)}\n")
            out = f"ok {method} {path} {len(body)}\n".encode()
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out) + out)
            await w.drain()
    except Exception:
        pass
    w.close()
async def main():
    s = await asyncio.start_server(handle, sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1", int(sys.argv[1]))
    await s.serve_forever()
asyncio.run(main())
