"""Print a base port whose dev-cluster ports are all free on loopback: gRPC base+N, HTTP
base+100+N, federation base+200+N and OAuth base+300+N, for N in 1..3 (scripts/dev-cluster.sh
and the benchmark scripts)."""
import random
import socket

OFFSETS = [o + n for o in (0, 100, 200, 300) for n in (1, 2, 3)]

for _ in range(500):
    base = random.randrange(20000, 60000)
    socks = []
    try:
        for p in OFFSETS:
            s = socket.socket()
            s.bind(("127.0.0.1", base + p))
            socks.append(s)
        print(base)
        break
    except OSError:
        pass
    finally:
        for s in socks:
            s.close()
