#!/usr/bin/env python3
"""A stand-in for a managed service such as PowerSync, for rulekeeper's tests.

`serve DIR`: reads DIR/svc.json ({"rules": path, "port": n}), reads the rules file once at
start (as PowerSync does), appends "start <first line of rules>" to DIR/starts.log and serves
GET /probe on 127.0.0.1:port:
  - rules containing "health: bad"   -> 500 forever
  - rules containing "health: flaky" -> 200 for 0.3 s, then the process exits 1
  - otherwise                        -> 200
  - DIR/broken exists                -> like "health: flaky" on any rules: a broken
                                        dependency (database down), so last-good fails too
`restart DIR`: stops the running instance (pid file) and starts a new one, detached.
`stop DIR`: stops it.
"""
import json, os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
import threading


def load(d):
    with open(os.path.join(d, "svc.json")) as f:
        return json.load(f)


def serve(d):
    conf = load(d)
    try:
        with open(conf["rules"]) as f:
            rules = f.read()
    except OSError:
        rules = ""
    first = rules.splitlines()[0] if rules else "<none>"
    with open(os.path.join(d, "starts.log"), "a") as f:
        f.write("start %s\n" % first)
    state = {"healthy": "health: bad" not in rules}

    def reload(signum, frame):
        # SIGHUP: take the rules file up again, in the same process (a reload).
        try:
            with open(conf["rules"]) as f:
                text = f.read()
        except OSError:
            text = ""
        with open(os.path.join(d, "reloads.log"), "a") as f:
            f.write("reload %s\n" % (text.splitlines()[0] if text else "<none>"))
        state["healthy"] = "health: bad" not in text

    signal.signal(signal.SIGHUP, reload)

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            healthy = state["healthy"]
            code = 200 if healthy else 500
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok" if healthy else b"no")

        def log_message(self, *a):
            pass

    HTTPServer.allow_reuse_address = True
    for attempt in range(100):
        try:
            srv = HTTPServer(("127.0.0.1", conf["port"]), H)
            break
        except OSError:
            # the previous instance may still be going away
            if attempt == 99:
                raise
            time.sleep(0.05)
    if "health: flaky" in rules or os.path.exists(os.path.join(d, "broken")):
        def die():
            time.sleep(0.3)
            os._exit(1)
        threading.Thread(target=die, daemon=True).start()
    srv.serve_forever()


def pid_of(d):
    try:
        with open(os.path.join(d, "pid")) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def stop(d):
    pid = pid_of(d)
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
        for _ in range(500):
            try:
                # reap if it is our child, else poll for its exit
                os.kill(pid, 0)
                with open("/proc/%d/stat" % pid) as f:
                    if f.read().split(") ")[-1].startswith("Z"):
                        break
            except OSError:
                break
            time.sleep(0.01)


def start(d):
    log = open(os.path.join(d, "svc.log"), "a")
    p = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "serve", d],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )
    tmp = os.path.join(d, "pid.tmp")
    with open(tmp, "w") as f:
        f.write(str(p.pid))
    os.replace(tmp, os.path.join(d, "pid"))


def control(d):
    """One control command at a time per service directory: a restart command left running
    by a killed rulekeeper finishes before the next one starts, so there is never a second
    instance or a half-written pid file."""
    import fcntl
    f = open(os.path.join(d, "control.lock"), "a")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def main():
    cmd, d = sys.argv[1], sys.argv[2]
    if cmd == "serve":
        serve(d)
        return
    lock = control(d)
    if cmd == "restart":
        with open(os.path.join(d, "restarts.log"), "a") as f:
            f.write("restart\n")
        stop(d)
        start(d)
    elif cmd == "start":
        start(d)
    elif cmd == "stop":
        stop(d)
    else:
        sys.exit("usage: fakesvc.py serve|restart|start|stop DIR")
    lock.close()


if __name__ == "__main__":
    main()
