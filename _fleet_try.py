import time, tempfile
from pathlib import Path
from tests.stack import RabbitNode
from bench.fleet import Fleet, FleetSpec, fleet_app
r = RabbitNode(name_prefix="opsbot-bench-try")
try:
    r.start()
    t=time.monotonic()
    with Fleet(r.amqp_url, FleetSpec(workers=500, processes=2), Path(tempfile.mkdtemp())) as f:
        print("started", time.monotonic()-t)
        app = fleet_app(r.amqp_url)
        for cmd in ("active","reserved","stats","active"):
            t=time.monotonic()
            res = getattr(app.control.inspect(timeout=2.0, limit=500), cmd)()
            print(cmd, len(res), time.monotonic()-t)
        # events
        from celery.events.state import State
        st=State()
        with app.connection_for_read() as conn:
            recv=app.events.Receiver(conn, handlers={"*": st.event})
            try:
                recv.capture(limit=2000, timeout=5)
            except Exception as e: print("capture", e)
        print("alive", sum(1 for w in st.workers.values() if w.alive), len(st.workers))
finally:
    r.cleanup()
