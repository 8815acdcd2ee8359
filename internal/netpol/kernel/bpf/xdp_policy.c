// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Outpost's ingress policy at XDP: ordered first-match rules over IPv4
// source/destination CIDR, protocol and port ranges, a default action, a
// per-source token bucket on chosen destination ports, and per-rule packet
// and byte counters.
//
// Policy updates never open a window: rules live in two generations (slot 0
// and 1 of every per-generation map); user space fills the inactive one and
// then flips `active`, one 4-byte array write the program reads once per
// packet. Built with clang -target bpf through bpf2go (go generate); the
// generated Go and .o files are committed.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_RULES 16384
#define ACTION_DROP 0
#define ACTION_PASS 1

struct rule {
	__u32 src;      // network byte order
	__u32 src_mask; // network byte order
	__u32 dst;
	__u32 dst_mask;
	__u16 sport_lo; // host byte order; 0..65535 = any
	__u16 sport_hi;
	__u16 dport_lo;
	__u16 dport_hi;
	__u8 proto; // IPPROTO_*, 0 = any
	__u8 action;
	__u8 pad[2];
	__u32 counter; // index in counters: stable per rule name across updates
};

struct gen_settings {
	__u32 count;          // rules in this generation
	__u32 default_action; // for IPv4 matching no rule, and for IPv6
	__u32 rl_rate;        // tokens (packets) per second per source; 0 = off
	__u32 rl_burst;       // bucket size
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct bucket {
	__u64 last_ns;
	__u64 tokens_milli; // tokens * 1000
};

// Index of the active generation (0 or 1).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct gen_settings);
} settings SEC(".maps");

// Generation g's rule i is at g*MAX_RULES + i.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * MAX_RULES);
	__type(key, __u32);
	__type(value, struct rule);
} rules SEC(".maps");

// Per-rule counters, at the slot user space gave the rule's name (a name
// kept across updates keeps its slot, so updates never reset or copy
// counters); the default action counts at DEFAULT_SLOT.
#define DEFAULT_SLOT (2 * MAX_RULES)
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * MAX_RULES + 1);
	__type(key, __u32);
	__type(value, struct counter);
} counters SEC(".maps");

// Destination ports under the per-source rate limit: key gen<<16 | port.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * 64);
	__type(key, __u32);
	__type(value, __u8);
} rl_ports SEC(".maps");

// Token buckets by source address (network order), least recently used
// sources evicted: a flood of spoofed sources cannot grow it.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct bucket);
} buckets SEC(".maps");

// Global counters: see the STAT_ constants.
#define STAT_RATE_LIMITED 0
#define STAT_NON_IP 1
#define STAT_IPV6 2
#define STAT_MALFORMED 3
#define STAT_MAX 4
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, struct counter);
} stats SEC(".maps");

struct match_ctx {
	__u32 gen;
	__u32 src, dst;
	__u16 sport, dport;
	__u8 proto;
	__s32 hit; // rule index, -1 = none
	__u8 action;
	__u32 counter;
};

static __always_inline void count(void *map, __u32 idx, __u64 bytes) {
	struct counter *c = bpf_map_lookup_elem(map, &idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static long match_rule(__u64 i, void *data) {
	struct match_ctx *m = data;
	__u32 key = m->gen * MAX_RULES + (__u32)i;
	struct rule *r = bpf_map_lookup_elem(&rules, &key);
	if (!r)
		return 1;
	if ((m->src & r->src_mask) != r->src || (m->dst & r->dst_mask) != r->dst)
		return 0;
	if (r->proto && r->proto != m->proto)
		return 0;
	if (m->sport < r->sport_lo || m->sport > r->sport_hi || m->dport < r->dport_lo || m->dport > r->dport_hi)
		return 0;
	m->hit = (__s32)i;
	m->action = r->action;
	m->counter = r->counter;
	return 1; // first match wins
}

// rate_ok takes one token from src's bucket; false when it is empty.
static __always_inline int rate_ok(__u32 src, struct gen_settings *s) {
	__u64 now = bpf_ktime_get_ns();
	__u64 cap = (__u64)s->rl_burst * 1000;
	struct bucket *b = bpf_map_lookup_elem(&buckets, &src);
	if (!b) {
		struct bucket nb = {.last_ns = now, .tokens_milli = cap - 1000};
		bpf_map_update_elem(&buckets, &src, &nb, BPF_ANY);
		return 1;
	}
	__u64 elapsed = now - b->last_ns;
	__u64 add = elapsed / 1000 * s->rl_rate / 1000; // milli-tokens: ns/1e3 * rate / 1e3
	__u64 tokens = b->tokens_milli + add;
	if (tokens > cap)
		tokens = cap;
	b->last_ns = now;
	if (tokens < 1000) {
		b->tokens_milli = tokens;
		return 0;
	}
	b->tokens_milli = tokens - 1000;
	return 1;
}

SEC("xdp")
int outpost_policy(struct xdp_md *ctx) {
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 len = end - data;
	__u32 zero = 0;
	__u32 *genp = bpf_map_lookup_elem(&active, &zero);
	if (!genp)
		return XDP_PASS;
	__u32 gen = *genp & 1;
	struct gen_settings *s = bpf_map_lookup_elem(&settings, &gen);
	if (!s)
		return XDP_PASS;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end) {
		count(&stats, STAT_MALFORMED, len);
		return XDP_DROP;
	}
	__u16 proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_IPV6)) {
		count(&stats, STAT_IPV6, len);
		return s->default_action == ACTION_PASS ? XDP_PASS : XDP_DROP;
	}
	if (proto != bpf_htons(ETH_P_IP)) {
		count(&stats, STAT_NON_IP, len); // ARP and the like: always passed
		return XDP_PASS;
	}
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5) {
		count(&stats, STAT_MALFORMED, len);
		return XDP_DROP;
	}
	struct match_ctx m = {.gen = gen, .src = ip->saddr, .dst = ip->daddr, .proto = ip->protocol, .hit = -1};
	void *l4 = (void *)ip + ip->ihl * 4;
	int first_fragment = (ip->frag_off & bpf_htons(0x1fff)) == 0;
	if (first_fragment && ip->protocol == IPPROTO_TCP) {
		struct tcphdr *t = l4;
		if ((void *)(t + 1) > end) {
			count(&stats, STAT_MALFORMED, len);
			return XDP_DROP;
		}
		m.sport = bpf_ntohs(t->source);
		m.dport = bpf_ntohs(t->dest);
	} else if (first_fragment && ip->protocol == IPPROTO_UDP) {
		struct udphdr *u = l4;
		if ((void *)(u + 1) > end) {
			count(&stats, STAT_MALFORMED, len);
			return XDP_DROP;
		}
		m.sport = bpf_ntohs(u->source);
		m.dport = bpf_ntohs(u->dest);
	}

	if (s->rl_rate && (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP)) {
		__u32 pk = gen << 16 | m.dport;
		if (bpf_map_lookup_elem(&rl_ports, &pk) && !rate_ok(m.src, s)) {
			count(&stats, STAT_RATE_LIMITED, len);
			return XDP_DROP;
		}
	}

	__u32 n = s->count;
	if (n > MAX_RULES)
		n = MAX_RULES;
	bpf_loop(n, match_rule, &m, 0);
	__u32 action;
	__u32 cidx;
	if (m.hit >= 0) {
		action = m.action;
		cidx = m.counter;
	} else {
		action = s->default_action;
		cidx = DEFAULT_SLOT;
	}
	count(&counters, cidx, len);
	return action == ACTION_PASS ? XDP_PASS : XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
