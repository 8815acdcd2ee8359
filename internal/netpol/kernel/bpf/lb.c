// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Outpost's L4 load balancer for local clients, at the socket level:
// cgroup/connect4 points a TCP socket that connects to a virtual IP:port
// at one of the service's backends before the first packet is sent (so an
// established flow never moves when the backend set changes), and
// cgroup/getpeername4 shows the virtual address again. The socket's cookie
// maps to its original destination in an LRU hash (connection tracking).
//
// User space (lb.go) owns the maps: svcs (VIP -> id, healthy count,
// algorithm), backends (id*MAX_BACKENDS + i), maglev (id*MAGLEV_SIZE + i
// -> backend index) and counts a connection per backend slot.
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_SERVICES 64
#define MAX_BACKENDS 64
#define MAGLEV_SIZE 4093
#define ALGO_RR 0
#define ALGO_MAGLEV 1

struct lb_key {
	__u32 vip;   // network byte order
	__u16 vport; // network byte order
	__u16 proto;
};

struct lb_svc {
	__u32 id;
	__u32 count; // healthy backends, 0 = refuse
	__u32 algo;
	__u32 pad;
};

struct lb_backend {
	__u32 ip;   // network byte order
	__u16 port; // network byte order
	__u16 pad;
};

struct lb_ct {
	__u32 vip;
	__u32 bip;
	__u16 vport;
	__u16 bport;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct lb_key);
	__type(value, struct lb_svc);
} svcs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SERVICES * MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_backend);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SERVICES * MAGLEV_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u32);
} rr SEC(".maps");

// active[id*MAX_BACKENDS + k], k < count: the healthy backends' indices
// (round robin walks these; backends and counters stay at fixed indices).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SERVICES * MAX_BACKENDS);
	__type(key, __u32);
	__type(value, __u32);
} active SEC(".maps");

// conns[id*MAX_BACKENDS + i] counts connects sent to backend i;
// nobackend[id] the connects refused because none was healthy.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SERVICES * MAX_BACKENDS);
	__type(key, __u32);
	__type(value, __u64);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u64);
} nobackend SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); // socket cookie
	__type(value, struct lb_ct);
} ct SEC(".maps");

static __always_inline __u32 mix(__u32 h, __u32 v)
{
	v *= 0xcc9e2d51;
	v = (v << 15) | (v >> 17);
	v *= 0x1b873593;
	h ^= v;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

SEC("cgroup/connect4")
int outpost_lb_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	struct lb_key k = {.vip = ctx->user_ip4, .vport = (__u16)ctx->user_port, .proto = IPPROTO_TCP};
	struct lb_svc *s = bpf_map_lookup_elem(&svcs, &k);
	if (!s)
		return 1;
	__u32 id = s->id, n = s->count;
	if (id >= MAX_SERVICES)
		return 1;
	if (n == 0 || n > MAX_BACKENDS) {
		__u64 *c = bpf_map_lookup_elem(&nobackend, &id);
		if (c)
			*c += 1;
		return 0; // connect() fails with EPERM: nothing healthy
	}
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u32 idx;
	if (s->algo == ALGO_MAGLEV) {
		// The source port is not chosen yet at connect(): the 5-tuple
		// known here is the socket (cookie), source address, VIP and port.
		__u32 h = mix(0x4f757470, (__u32)cookie);
		h = mix(h, (__u32)(cookie >> 32));
		h = mix(h, k.vip);
		h = mix(h, k.vport);
		struct bpf_sock *sk = ctx->sk;
		if (sk)
			h = mix(h, sk->src_ip4);
		__u32 slot = id * MAGLEV_SIZE + h % MAGLEV_SIZE;
		__u32 *b = bpf_map_lookup_elem(&maglev, &slot);
		if (!b)
			return 1;
		idx = *b;
	} else {
		__u32 *ctr = bpf_map_lookup_elem(&rr, &id);
		if (!ctr)
			return 1;
		// Read, then add atomically (its return value needs -mcpu=v3):
		// two connects racing on two CPUs may pick the same backend.
		__u32 a = id * MAX_BACKENDS + *ctr % n;
		__sync_fetch_and_add(ctr, 1);
		__u32 *b = bpf_map_lookup_elem(&active, &a);
		if (!b)
			return 1;
		idx = *b;
	}
	if (idx >= MAX_BACKENDS)
		return 1;
	__u32 bk = id * MAX_BACKENDS + idx;
	struct lb_backend *be = bpf_map_lookup_elem(&backends, &bk);
	if (!be || be->ip == 0)
		return 1;
	struct lb_ct e = {.vip = k.vip, .vport = k.vport, .bip = be->ip, .bport = be->port};
	bpf_map_update_elem(&ct, &cookie, &e, BPF_ANY);
	ctx->user_ip4 = be->ip;
	ctx->user_port = be->port;
	__u64 *c = bpf_map_lookup_elem(&conns, &bk);
	if (c)
		*c += 1;
	return 1;
}

SEC("cgroup/getpeername4")
int outpost_lb_getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct lb_ct *e = bpf_map_lookup_elem(&ct, &cookie);
	if (e && e->bip == ctx->user_ip4 && e->bport == (__u16)ctx->user_port) {
		ctx->user_ip4 = e->vip;
		ctx->user_port = e->vport;
	}
	return 1;
}

char __license[] SEC("license") = "Dual BSD/GPL";
