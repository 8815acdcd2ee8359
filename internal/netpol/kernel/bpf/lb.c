// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Outpost's L4 load balancer for local clients, at the socket level:
// cgroup/connect4 points a TCP or UDP socket that connects to a virtual
// IP:port at one of the service's backends before the first packet is sent
// (so an established flow never moves when the backend set changes),
// cgroup/sendmsg4 does the same for an unconnected UDP socket's datagrams,
// and cgroup/getpeername4 and cgroup/recvmsg4 show the virtual address
// again. The socket's cookie maps to its original destination and backend
// in an LRU hash (connection tracking).
//
// User space (lb.go) owns the maps: svcs (VIP -> id, healthy count,
// algorithm), backends (id*MAX_BACKENDS + i), maglev (id*MAGLEV_SIZE + i
// -> backend index) and counts a connection per backend slot.
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <stddef.h>
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
	__u16 up;   // 1 while the backend is healthy
};

struct lb_ct {
	__u32 vip;
	__u32 bip;
	__u16 vport;
	__u16 bport;
	__u32 slot; // the backend's slot in backends, + 1
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

// pick chooses a backend of service k for the socket with this cookie
// (maglev hashes the socket, source address and VIP; round robin walks the
// healthy backends) and counts it. It returns 0 and the backend, 1 when k
// is no service (leave the address alone), -1 when nothing is healthy.
static __always_inline int pick(struct lb_key *k, __u64 cookie, __u32 src_ip, struct lb_backend *out, __u32 *slot)
{
	struct lb_svc *s = bpf_map_lookup_elem(&svcs, k);
	if (!s)
		return 1;
	__u32 id = s->id, n = s->count;
	if (id >= MAX_SERVICES)
		return 1;
	if (n == 0 || n > MAX_BACKENDS) {
		__u64 *c = bpf_map_lookup_elem(&nobackend, &id);
		if (c)
			*c += 1;
		return -1;
	}
	__u32 idx;
	if (s->algo == ALGO_MAGLEV) {
		// The source port is not chosen yet at connect(): the 5-tuple
		// known here is the socket (cookie), source address, VIP and port.
		__u32 h = mix(0x4f757470, (__u32)cookie);
		h = mix(h, (__u32)(cookie >> 32));
		h = mix(h, k->vip);
		h = mix(h, k->vport);
		h = mix(h, src_ip);
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
	*out = *be;
	*slot = bk;
	__u64 *c = bpf_map_lookup_elem(&conns, &bk);
	if (c)
		*c += 1;
	return 0;
}

// balance points a TCP or UDP socket's destination at a backend when it is
// a VIP. A socket keeps the backend it got (ct by cookie) while that
// backend is up: a connected socket never moves, and an unconnected UDP
// socket's datagrams to one VIP go to one backend, like a flow, until it
// fails its health check.
static __always_inline int balance(struct bpf_sock_addr *ctx)
{
	__u32 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	struct lb_key k = {.vip = ctx->user_ip4, .vport = (__u16)ctx->user_port, .proto = (__u16)proto};
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct lb_ct *e = bpf_map_lookup_elem(&ct, &cookie);
	struct lb_backend be = {};
	int reuse = 0;
	if (e && e->vip == k.vip && e->vport == k.vport && e->slot > 0 && bpf_map_lookup_elem(&svcs, &k)) {
		__u32 slot = e->slot - 1;
		struct lb_backend *cur = bpf_map_lookup_elem(&backends, &slot);
		if (cur && cur->up && cur->ip == e->bip && cur->port == e->bport) {
			be = *cur;
			reuse = 1;
		}
	}
	if (!reuse) {
		__u32 src = 0, slot = 0;
		struct bpf_sock *sk = ctx->sk;
		if (sk)
			src = sk->src_ip4;
		int r = pick(&k, cookie, src, &be, &slot);
		if (r > 0)
			return 1;
		if (r < 0)
			return 0; // EPERM: nothing healthy
		struct lb_ct ne = {.vip = k.vip, .vport = k.vport, .bip = be.ip, .bport = be.port, .slot = slot + 1};
		bpf_map_update_elem(&ct, &cookie, &ne, BPF_ANY);
	}
	ctx->user_ip4 = be.ip;
	ctx->user_port = be.port;
	return 1;
}

SEC("cgroup/connect4")
int outpost_lb_connect4(struct bpf_sock_addr *ctx)
{
	return balance(ctx);
}

// An unconnected UDP socket's sendto()/sendmsg() to a VIP.
SEC("cgroup/sendmsg4")
int outpost_lb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return balance(ctx);
}

// unbalance shows the VIP where the kernel reports the backend's address:
// getpeername() of a connected socket, the source of a received datagram.
static __always_inline void unbalance(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct lb_ct *e = bpf_map_lookup_elem(&ct, &cookie);
	if (e && e->bip == ctx->user_ip4 && e->bport == (__u16)ctx->user_port) {
		ctx->user_ip4 = e->vip;
		ctx->user_port = e->vport;
	}
}

SEC("cgroup/getpeername4")
int outpost_lb_getpeername4(struct bpf_sock_addr *ctx)
{
	unbalance(ctx);
	return 1;
}

SEC("cgroup/recvmsg4")
int outpost_lb_recvmsg4(struct bpf_sock_addr *ctx)
{
	unbalance(ctx);
	return 1;
}

// Remote clients: TC ingress DNAT (VIP -> backend) and egress SNAT
// (backend -> VIP) on a named interface, for backends on this host.
// flows (LRU) keeps a client's 4-tuple on the backend it got first, so a
// backend set change never moves an established flow; revnat maps the
// backend side of a flow back to the VIP for the replies.
struct flow_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
};

struct flow_val {
	__u32 ip;
	__u16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} revnat SEC(".maps");

#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define TCP_OFF (ETH_HLEN + sizeof(struct iphdr))
#define TCP_CSUM_OFF (TCP_OFF + offsetof(struct tcphdr, check))
#define TCP_SPORT_OFF (TCP_OFF + offsetof(struct tcphdr, source))
#define TCP_DPORT_OFF (TCP_OFF + offsetof(struct tcphdr, dest))

static __always_inline int parse(struct __sk_buff *skb, struct flow_key *k)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_TCP)
		return -1;
	if (ip->frag_off & bpf_htons(0x3fff))
		return -1;
	struct tcphdr *tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > end)
		return -1;
	k->saddr = ip->saddr;
	k->daddr = ip->daddr;
	k->sport = tcp->source;
	k->dport = tcp->dest;
	return 0;
}

static __always_inline int rewrite(struct __sk_buff *skb, int ip_off, int port_off, __u32 oip, __u32 nip, __u16 oport, __u16 nport)
{
	if (bpf_l4_csum_replace(skb, TCP_CSUM_OFF, oip, nip, BPF_F_PSEUDO_HDR | 4) ||
	    bpf_l4_csum_replace(skb, TCP_CSUM_OFF, oport, nport, 2) ||
	    bpf_l3_csum_replace(skb, IP_CSUM_OFF, oip, nip, 4) ||
	    bpf_skb_store_bytes(skb, ip_off, &nip, 4, 0) ||
	    bpf_skb_store_bytes(skb, port_off, &nport, 2, 0))
		return -1;
	return 0;
}

SEC("tc")
int outpost_lb_tc_ingress(struct __sk_buff *skb)
{
	struct flow_key f = {};
	if (parse(skb, &f))
		return TC_ACT_OK;
	struct lb_key k = {.vip = f.daddr, .vport = f.dport, .proto = IPPROTO_TCP};
	struct lb_svc *s = bpf_map_lookup_elem(&svcs, &k);
	if (!s)
		return TC_ACT_OK;
	__u32 id = s->id, n = s->count;
	if (id >= MAX_SERVICES)
		return TC_ACT_OK;
	struct flow_val *v = bpf_map_lookup_elem(&flows, &f);
	struct flow_val nv = {};
	if (v) {
		nv = *v;
	} else {
		if (n == 0 || n > MAX_BACKENDS) {
			__u64 *c = bpf_map_lookup_elem(&nobackend, &id);
			if (c)
				*c += 1;
			return TC_ACT_SHOT;
		}
		__u32 idx;
		if (s->algo == ALGO_MAGLEV) {
			__u32 h = mix(0x4f757470, f.saddr);
			h = mix(h, f.daddr);
			h = mix(h, ((__u32)f.sport << 16) | f.dport);
			h = mix(h, IPPROTO_TCP);
			__u32 slot = id * MAGLEV_SIZE + h % MAGLEV_SIZE;
			__u32 *b = bpf_map_lookup_elem(&maglev, &slot);
			if (!b)
				return TC_ACT_OK;
			idx = *b;
		} else {
			__u32 *ctr = bpf_map_lookup_elem(&rr, &id);
			if (!ctr)
				return TC_ACT_OK;
			__u32 a = id * MAX_BACKENDS + *ctr % n;
			__sync_fetch_and_add(ctr, 1);
			__u32 *b = bpf_map_lookup_elem(&active, &a);
			if (!b)
				return TC_ACT_OK;
			idx = *b;
		}
		if (idx >= MAX_BACKENDS)
			return TC_ACT_OK;
		__u32 bk = id * MAX_BACKENDS + idx;
		struct lb_backend *be = bpf_map_lookup_elem(&backends, &bk);
		if (!be || be->ip == 0)
			return TC_ACT_OK;
		nv.ip = be->ip;
		nv.port = be->port;
		bpf_map_update_elem(&flows, &f, &nv, BPF_ANY);
		struct flow_key r = {.saddr = be->ip, .daddr = f.saddr, .sport = be->port, .dport = f.sport};
		struct flow_val rv = {.ip = f.daddr, .port = f.dport};
		bpf_map_update_elem(&revnat, &r, &rv, BPF_ANY);
		__u64 *c = bpf_map_lookup_elem(&conns, &bk);
		if (c)
			*c += 1;
	}
	if (rewrite(skb, IP_DST_OFF, TCP_DPORT_OFF, f.daddr, nv.ip, f.dport, nv.port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

SEC("tc")
int outpost_lb_tc_egress(struct __sk_buff *skb)
{
	struct flow_key f = {};
	if (parse(skb, &f))
		return TC_ACT_OK;
	struct flow_val *v = bpf_map_lookup_elem(&revnat, &f);
	if (!v)
		return TC_ACT_OK;
	struct flow_val rv = *v;
	if (rewrite(skb, IP_SRC_OFF, TCP_SPORT_OFF, f.saddr, rv.ip, f.sport, rv.port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char __license[] SEC("license") = "Dual BSD/GPL";
