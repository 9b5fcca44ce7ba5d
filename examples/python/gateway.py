"""A Linux gateway that is itself a Lanyard device.

It registers with a twin host, reports its hostname and load average in
its shadow, reads its CPU temperature as its sensor (the first thermal
zone; none on machines without one, which health then counts as failed
reads), and answers a ``restart_service`` command for the units it is
allowed to restart. It runs until it is decommissioned, ``--seconds``
pass, or Ctrl-C, printing what happens.

    pip install ./bindings/python
    lanyard twin --broker mqtt://127.0.0.1:1883 --state-dir /tmp/twin &
    python3 examples/python/gateway.py --broker mqtt://127.0.0.1:1883 \\
        --state-dir /tmp/gateway

Then, from anywhere (here with the Python app client):

    >>> app = lanyard.App("mqtt://127.0.0.1:1883")
    >>> app.command("ly-0200000000aa", "restart_service", {"unit": "mosquitto"})

Restarting is simulated (printed): a real gateway would call systemctl.
"""

import argparse
import os
import socket
import sys
from typing import Optional, Tuple

import lanyard

# What the cloud may ask this gateway to restart.
RESTARTABLE = {"mosquitto", "lanyard-bridge", "modem-manager"}


def cpu_temperature() -> Optional[Tuple[float, float]]:
    """The first thermal zone in °C, humidity 0; None when unreadable."""
    try:
        with open("/sys/class/thermal/thermal_zone0/temp") as f:
            return (int(f.read().strip()) / 1000.0, 0.0)
    except (OSError, ValueError):
        return None


def restart_service(args: lanyard.Json) -> lanyard.Json:
    unit = args["unit"]  # a missing "unit" is refused as bad arguments
    if unit not in RESTARTABLE:
        raise ValueError(f"{unit} is not a unit this gateway restarts")
    print(f"restarting {unit} (simulated)", flush=True)
    return {"unit": unit, "restarted": True}


def show(event: lanyard.Json) -> None:
    kind = event["type"]
    if kind in ("sent", "received"):
        arrow = "->" if kind == "sent" else "<-"
        print(f"{arrow} {event['kind']}", flush=True)
    elif kind == "state":
        print(f"state {event['from']} -> {event['to']}", flush=True)
    else:
        details = {k: v for k, v in event.items() if k != "type"}
        print(f"{kind} {details}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--state-dir", required=True, help="where the agent keeps its state")
    p.add_argument("--mac", default="02:00:00:00:00:aa", help="the device id derives from it")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--ca", help="CA certificate (PEM) for mqtts")
    p.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--key", help="client key (PEM) for mutual TLS")
    a = p.parse_args()

    try:
        gateway = lanyard.Device(
            a.broker, a.mac, a.state_dir,
            commands={"restart_service": restart_service},
            sensors=cpu_temperature,
            ca=a.ca, cert=a.cert, key=a.key,
        )
    except (ValueError, OSError) as e:
        sys.exit(f"gateway: {e}")
    print(f"gateway {gateway.device_id} on {a.broker}", flush=True)
    gateway.report("host.name", socket.gethostname())
    gateway.report("host.load_1m", os.getloadavg()[0])
    try:
        gateway.run(seconds=a.seconds, on_event=show)
    except KeyboardInterrupt:
        print("stopped", flush=True)
    except OSError as e:
        sys.exit(f"gateway: {e}")


if __name__ == "__main__":
    main()
