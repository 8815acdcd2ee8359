#!/usr/bin/python3
"""A minimal Outpost component in Python (Debian: apt-get install python3-paho-mqtt).

It connects to the local bus with the credentials the supervisor passes in
OUTPOST_MQTT_URL (unix:///path/to/socket), OUTPOST_MQTT_USERNAME and
OUTPOST_MQTT_PASSWORD, publishes a heartbeat on components/<name>/heartbeat,
answers components/<name>/ping on components/<name>/pong, reads its
configuration from OUTPOST_CONFIG (JSON) and exits cleanly on SIGTERM.
"""
import json
import os
import signal
import socket
import sys
import time
from urllib.parse import urlparse

import paho.mqtt.client as mqtt


class BusClient(mqtt.Client):
    """paho-mqtt 1.x speaks TCP only; this opens the Unix socket instead."""

    def __init__(self, url, **kw):
        super().__init__(**kw)
        self._bus = urlparse(url)

    def _create_socket_connection(self):
        if self._bus.scheme == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(self._bus.path)
            return s
        return super()._create_socket_connection()


def main():
    name = os.environ["OUTPOST_COMPONENT_NAME"]
    cfg = {"heartbeat_ms": 1000, "greeting": "hello"}
    cfg.update(json.loads(os.environ.get("OUTPOST_CONFIG") or "{}"))
    prefix = "components/%s/" % name
    url = os.environ["OUTPOST_MQTT_URL"]

    client = BusClient(url, client_id=name, clean_session=True)
    client.username_pw_set(os.environ["OUTPOST_MQTT_USERNAME"], os.environ["OUTPOST_MQTT_PASSWORD"])

    def on_connect(c, userdata, flags, rc):
        if rc != 0:
            print("connect refused: rc=%d" % rc, file=sys.stderr, flush=True)
            os._exit(1)
        c.subscribe(prefix + "ping", qos=0)

    def on_message(c, userdata, msg):
        if msg.topic == prefix + "ping":
            c.publish(prefix + "pong", "%s: %s" % (cfg["greeting"], msg.payload.decode(errors="replace")))

    def on_disconnect(c, userdata, rc):
        if rc != 0:
            print("bus connection lost: rc=%d" % rc, file=sys.stderr, flush=True)
            os._exit(1)

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    host = urlparse(url).hostname or "localhost"
    port = urlparse(url).port or 1883
    client.connect(host, port, keepalive=30)
    client.loop_start()

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    print("hello-py ready", flush=True)
    period = cfg["heartbeat_ms"] / 1000.0
    while not stop["now"]:
        client.publish(prefix + "heartbeat", str(time.time()))
        time.sleep(period)
    client.disconnect()
    client.loop_stop()
    print("hello-py stopped", flush=True)


if __name__ == "__main__":
    main()
