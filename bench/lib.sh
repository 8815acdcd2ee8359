# Helpers shared by the bench/*.sh scripts. Source it from the repository
# root (the scripts cd there first):  . bench/lib.sh

# bench_lock holds /tmp/outpost-bench.lock (fd 9) until the script exits, so
# that two benchmarks never share the machine.
bench_lock() {
	exec 9>/tmp/outpost-bench.lock
	flock 9
}

# need CMD PACKAGE: CMD on PATH (or in /usr/sbin), installing PACKAGE with
# apt-get when running as root.
need() {
	command -v "$1" >/dev/null 2>&1 && return
	[ -x "/usr/sbin/$1" ] && return
	if [ "$(id -u)" = 0 ]; then
		apt-get install -y "$2" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$2" >/dev/null; }
	else
		echo "missing $1: apt-get install -y $2" >&2
		exit 1
	fi
}

# port prints a free loopback TCP port chosen by the kernel.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT PID: until something accepts on PORT (0), or PID died or
# 15 s passed (1).
wait_port() {
	for _ in $(seq 1 300); do
		port_busy "$1" && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

# mosquitto_conf PORT prints the Mosquitto configuration the side-by-side
# benchmarks use, stated rather than implied: Debian's defaults for the
# queues, no persistence, and TCP_NODELAY like the Go brokers (Go sets it on
# every TCP connection; Mosquitto's default is off, which adds Nagle delays).
mosquitto_conf() {
	cat <<-CONF
	listener $1 127.0.0.1
	allow_anonymous true
	persistence false
	max_queued_messages 1000
	max_inflight_messages 20
	set_tcp_nodelay true
	log_type error
	log_type warning
	CONF
}

# cpu_ticks PID prints the CPU time PID has used (utime+stime) in clock ticks
# (getconf CLK_TCK per second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# cloud_conf PORT prints the "cloud" Mosquitto of the store-and-forward
# benchmarks: a window of 1000 in flight, unlimited queues, TCP_NODELAY.
cloud_conf() {
	cat <<-CONF
	listener $1 127.0.0.1
	allow_anonymous true
	max_inflight_messages 1000
	max_queued_messages 0
	set_tcp_nodelay true
	CONF
}

# uplink_agent_conf DATA_DIR HTTP_PORT MQTT_PORT CLOUD_PORT prints the agent
# of the store-and-forward benchmarks: devices publish bench/# on MQTT_PORT,
# routed to one lane, fsync always, uplink to the cloud on CLOUD_PORT.
uplink_agent_conf() {
	cat <<-YAML
	node_id: gw
	data_dir: $1
	log: {level: warn}
	telemetry: {address: 127.0.0.1:$2}
	runtime: {memory_limit: 64MiB}
	broker:
	  listeners: [{type: tcp, address: 127.0.0.1:$3}]
	  allow_anonymous: true
	  anonymous_acl: [{topic: "#", access: all}]
	  limits: {receive_maximum: 256}
	pipeline:
	  partitions: 4
	  routes: [{from: ["bench/#"], to: ["uplink:telemetry"]}]
	uplink:
	  enabled: true
	  broker: mqtt://127.0.0.1:$4
	  reconnect: {min: 100ms, max: 500ms}
	  in_flight: 1000
	  lanes: [{name: telemetry, queue: {fsync: always}}]
	YAML
}
