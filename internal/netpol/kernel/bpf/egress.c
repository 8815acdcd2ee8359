// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Outpost's per-component egress policy: cgroup/connect4, connect6,
// sendmsg4 and sendmsg6 programs attached to each supervised component's
// cgroup (in the agent's BPF-only cgroup2 hierarchy). The component is
// found by the cgroup id of the calling task; a connect or an addressed
// sendmsg to a destination none of its allow entries match is refused
// (the caller sees EPERM), counted per component and per destination.
// A task in no known component (cgroup id not in `components`) is let
// through: the programs are attached only to component cgroups.
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_COMPONENTS 256
#define MAX_ALLOW 64
#define FAMILY_V4 4
#define FAMILY_V6 6

// One allow entry: a v4 or v6 prefix (IPv4 in the first word), a port
// range and a protocol. IPv4-mapped IPv6 destinations match v4 entries.
struct egress_allow {
	__u32 addr[4]; // network byte order
	__u32 mask[4]; // network byte order
	__u16 port_lo; // host byte order
	__u16 port_hi;
	__u8 family; // FAMILY_V4 or FAMILY_V6
	__u8 proto;  // IPPROTO_TCP, IPPROTO_UDP, 0 = both
	__u8 pad[2];
};

struct egress_component {
	__u32 count; // allow entries in use
	__u32 pad;
};

// A refused destination, per component: its count, and whether user space
// has logged it (set by user space).
struct egress_denied_key {
	__u32 component;
	__u32 addr[4];
	__u16 port;
	__u8 family;
	__u8 proto;
};

// cgroup id -> component index.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_COMPONENTS);
	__type(key, __u64);
	__type(value, __u32);
} components SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_COMPONENTS);
	__type(key, __u32);
	__type(value, struct egress_component);
} component_settings SEC(".maps");

// Component c's allow entry i is at c*MAX_ALLOW + i.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_COMPONENTS * MAX_ALLOW);
	__type(key, __u32);
	__type(value, struct egress_allow);
} allow SEC(".maps");

// Refusals per component (index 2c) and allowed per component (2c+1).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * MAX_COMPONENTS);
	__type(key, __u32);
	__type(value, __u64);
} verdicts SEC(".maps");

// Refusals per component and destination; user space reads it to log each
// destination once. LRU: a component trying many destinations cannot grow it.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct egress_denied_key);
	__type(value, __u64);
} denied SEC(".maps");

struct egress_match {
	__u32 comp;
	__u32 addr[4];
	__u16 port;
	__u8 family;
	__u8 proto;
	__u8 hit;
};

static long match_allow(__u64 i, void *data) {
	struct egress_match *m = data;
	__u32 key = m->comp * MAX_ALLOW + (__u32)i;
	struct egress_allow *a = bpf_map_lookup_elem(&allow, &key);
	if (!a)
		return 1;
	if (a->family != m->family)
		return 0;
	if (a->proto && a->proto != m->proto)
		return 0;
	if (m->port < a->port_lo || m->port > a->port_hi)
		return 0;
	if ((m->addr[0] & a->mask[0]) != a->addr[0] || (m->addr[1] & a->mask[1]) != a->addr[1] ||
	    (m->addr[2] & a->mask[2]) != a->addr[2] || (m->addr[3] & a->mask[3]) != a->addr[3])
		return 0;
	m->hit = 1;
	return 1;
}

static __always_inline void bump(__u32 idx) {
	__u64 *v = bpf_map_lookup_elem(&verdicts, &idx);
	if (v)
		(*v)++;
}

// decide returns 1 (let the call proceed) or 0 (refuse it: EPERM).
static __always_inline int decide(struct egress_match *m) {
	__u64 cg = bpf_get_current_cgroup_id();
	__u32 *comp = bpf_map_lookup_elem(&components, &cg);
	if (!comp)
		return 1;
	m->comp = *comp;
	if (m->comp >= MAX_COMPONENTS)
		return 1;
	struct egress_component *s = bpf_map_lookup_elem(&component_settings, &m->comp);
	if (!s)
		return 1;
	__u32 n = s->count;
	if (n > MAX_ALLOW)
		n = MAX_ALLOW;
	if (m->proto != IPPROTO_TCP && m->proto != IPPROTO_UDP)
		m->proto = 0; // other protocols only match entries with proto any
	bpf_loop(n, match_allow, m, 0);
	if (m->hit) {
		bump(2 * m->comp + 1);
		return 1;
	}
	bump(2 * m->comp);
	struct egress_denied_key k = {.component = m->comp, .port = m->port, .family = m->family, .proto = m->proto};
	k.addr[0] = m->addr[0];
	k.addr[1] = m->addr[1];
	k.addr[2] = m->addr[2];
	k.addr[3] = m->addr[3];
	__u64 *c = bpf_map_lookup_elem(&denied, &k);
	if (c) {
		__sync_fetch_and_add(c, 1);
	} else {
		__u64 one = 1;
		bpf_map_update_elem(&denied, &k, &one, BPF_NOEXIST);
	}
	return 0;
}

static __always_inline int v4(struct bpf_sock_addr *ctx) {
	struct egress_match m = {.family = FAMILY_V4, .proto = ctx->protocol};
	m.addr[0] = ctx->user_ip4;
	m.port = bpf_ntohs((__u16)ctx->user_port);
	return decide(&m);
}

static __always_inline int v6(struct bpf_sock_addr *ctx) {
	struct egress_match m = {.family = FAMILY_V6, .proto = ctx->protocol};
	m.addr[0] = ctx->user_ip6[0];
	m.addr[1] = ctx->user_ip6[1];
	m.addr[2] = ctx->user_ip6[2];
	m.addr[3] = ctx->user_ip6[3];
	m.port = bpf_ntohs((__u16)ctx->user_port);
	if (m.addr[0] == 0 && m.addr[1] == 0 && m.addr[2] == bpf_htonl(0xffff)) {
		// ::ffff:a.b.c.d is IPv4 a.b.c.d: v4 entries decide.
		m.family = FAMILY_V4;
		m.addr[0] = m.addr[3];
		m.addr[2] = 0;
		m.addr[3] = 0;
	}
	return decide(&m);
}

SEC("cgroup/connect4")
int outpost_connect4(struct bpf_sock_addr *ctx) { return v4(ctx); }

SEC("cgroup/sendmsg4")
int outpost_sendmsg4(struct bpf_sock_addr *ctx) { return v4(ctx); }

SEC("cgroup/connect6")
int outpost_connect6(struct bpf_sock_addr *ctx) { return v6(ctx); }

SEC("cgroup/sendmsg6")
int outpost_sendmsg6(struct bpf_sock_addr *ctx) { return v6(ctx); }

char LICENSE[] SEC("license") = "Dual BSD/GPL";
