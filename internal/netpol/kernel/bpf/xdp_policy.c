// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Outpost's ingress policy at XDP: ordered first-match rules over IPv4 and
// IPv6 source/destination CIDR, protocol and port ranges, a default action,
// a per-source token bucket on chosen destination ports, and per-rule
// packet and byte counters.
//
// A packet is IPv4 or IPv6, so each generation holds two ordered lists:
// the rules an IPv4 packet can match (in `rules`, 32-bit addresses) and
// those an IPv6 packet can match (in `rules6`); a rule that names no
// address is in both, with one counter. IPv6 extension headers are walked
// to the transport header; neighbour discovery always passes (as ARP does
// for IPv4), and MLD with it; an IPv6 packet with an IPv4-mapped address is malformed.
//
// Policy updates never open a window: rules live in two generations (slot 0
// and 1 of every per-generation map); user space fills the inactive one and
// then flips `active`, one 4-byte array write the program reads once per
// packet. Built with clang -target bpf through bpf2go (go generate); the
// generated Go and .o files are committed.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
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
	__u8 kind; // KIND_RULE, or KIND_TRIE: a run of source-only rules
	__u8 pad;
	__u32 counter; // index in counters: stable per rule name across updates;
	               // for KIND_TRIE the run's segment id in the trie
};

#define KIND_RULE 0
#define KIND_TRIE 1

// An IPv6 rule: addresses and masks as four 32-bit words in network order.
struct rule6 {
	__u32 src[4];
	__u32 src_mask[4];
	__u32 dst[4];
	__u32 dst_mask[4];
	__u16 sport_lo;
	__u16 sport_hi;
	__u16 dport_lo;
	__u16 dport_hi;
	__u8 proto;
	__u8 action;
	__u8 kind;
	__u8 pad;
	__u32 counter;
};

// A run of consecutive rules that match on the source address alone (a
// block or allow list of networks, typically thousands long) is one
// KIND_TRIE entry in the rule list: one longest-prefix lookup instead of a
// comparison per rule. User space stores, for each prefix of the run, the
// earliest rule of the run whose network contains it, so the longest match
// is the first match. Keys: the run's segment id (generation in its high
// bits), then the address; prefix length 32 + the network's bits.
struct trie4_key {
	__u32 prefixlen;
	__u32 seg;
	__u32 addr;
};

struct trie6_key {
	__u32 prefixlen;
	__u32 seg;
	__u32 addr[4];
};

struct trie_val {
	__u8 action;
	__u8 pad[3];
	__u32 counter;
};

struct gen_settings {
	__u32 count;          // IPv4 rules in this generation
	__u32 default_action; // for packets no rule matches
	__u32 rl_rate;        // tokens (packets) per second per source; 0 = off
	__u32 rl_burst;       // bucket size
	__u32 count6;         // IPv6 rules in this generation
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

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * MAX_RULES);
	__type(key, __u32);
	__type(value, struct rule6);
} rules6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 2 * MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct trie4_key);
	__type(value, struct trie_val);
} trie4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 2 * MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct trie6_key);
	__type(value, struct trie_val);
} trie6 SEC(".maps");

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

// A token bucket's owner: an IPv4 source as ::ffff:a.b.c.d, an IPv6 source
// by its /64 (a host picks addresses in its /64 at will: privacy
// addresses, SLAAC).
struct src_key {
	__u32 a[4];
};

// Token buckets by source, least recently used sources evicted: a flood of
// spoofed sources cannot grow it.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct src_key);
	__type(value, struct bucket);
} buckets SEC(".maps");

// Global counters: see the STAT_ constants.
#define STAT_RATE_LIMITED 0
#define STAT_NON_IP 1
#define STAT_IPV6 2
#define STAT_MALFORMED 3
#define STAT_IPV6_ND 4
#define STAT_MAX 5
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, struct counter);
} stats SEC(".maps");

struct match_ctx {
	__u32 gen;
	__u32 src, dst;     // IPv4
	__u32 src6[4];      // IPv6
	__u32 dst6[4];
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

// take records rule i as the match (first match wins: the loop stops).
static __always_inline long take(struct match_ctx *m, __u64 i, __u8 action, __u32 counter) {
	m->hit = (__s32)i;
	m->action = action;
	m->counter = counter;
	return 1;
}

// l4_match checks a rule's protocol and port ranges, the same in both
// families.
static __always_inline int l4_match(struct match_ctx *m, __u8 proto, __u16 slo, __u16 shi, __u16 dlo, __u16 dhi) {
	return (!proto || proto == m->proto) && m->sport >= slo && m->sport <= shi && m->dport >= dlo && m->dport <= dhi;
}

static long match_rule(__u64 i, void *data) {
	struct match_ctx *m = data;
	__u32 key = m->gen * MAX_RULES + (__u32)i;
	struct rule *r = bpf_map_lookup_elem(&rules, &key);
	if (!r)
		return 1;
	if (r->kind == KIND_TRIE) {
		struct trie4_key k = {.prefixlen = 64, .seg = r->counter, .addr = m->src};
		struct trie_val *v = bpf_map_lookup_elem(&trie4, &k);
		return v ? take(m, i, v->action, v->counter) : 0;
	}
	if ((m->src & r->src_mask) != r->src || (m->dst & r->dst_mask) != r->dst)
		return 0;
	if (!l4_match(m, r->proto, r->sport_lo, r->sport_hi, r->dport_lo, r->dport_hi))
		return 0;
	return take(m, i, r->action, r->counter);
}

static __always_inline int masked_eq6(const __u32 *a, const __u32 *v, const __u32 *mask) {
	return (a[0] & mask[0]) == v[0] && (a[1] & mask[1]) == v[1] && (a[2] & mask[2]) == v[2] && (a[3] & mask[3]) == v[3];
}

static long match_rule6(__u64 i, void *data) {
	struct match_ctx *m = data;
	__u32 key = m->gen * MAX_RULES + (__u32)i;
	struct rule6 *r = bpf_map_lookup_elem(&rules6, &key);
	if (!r)
		return 1;
	if (r->kind == KIND_TRIE) {
		struct trie6_key k = {.prefixlen = 160, .seg = r->counter};
		__builtin_memcpy(k.addr, m->src6, 16);
		struct trie_val *v = bpf_map_lookup_elem(&trie6, &k);
		return v ? take(m, i, v->action, v->counter) : 0;
	}
	if (!masked_eq6(m->src6, r->src, r->src_mask) || !masked_eq6(m->dst6, r->dst, r->dst_mask))
		return 0;
	if (!l4_match(m, r->proto, r->sport_lo, r->sport_hi, r->dport_lo, r->dport_hi))
		return 0;
	return take(m, i, r->action, r->counter);
}

// rate_ok takes one token from the source's bucket; false when it is empty.
static __always_inline int rate_ok(struct src_key *src, struct gen_settings *s) {
	__u64 now = bpf_ktime_get_ns();
	__u64 cap = (__u64)s->rl_burst * 1000;
	struct bucket *b = bpf_map_lookup_elem(&buckets, src);
	if (!b) {
		struct bucket nb = {.last_ns = now, .tokens_milli = cap - 1000};
		bpf_map_update_elem(&buckets, src, &nb, BPF_ANY);
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

// read_ports fills the match's ports from a TCP or UDP header at l4 (any
// other protocol has none); -1 when the header is cut short.
static __always_inline int read_ports(struct match_ctx *m, __u8 proto, void *l4, void *end) {
	if (proto == IPPROTO_TCP) {
		struct tcphdr *t = l4;
		if ((void *)(t + 1) > end)
			return -1;
		m->sport = bpf_ntohs(t->source);
		m->dport = bpf_ntohs(t->dest);
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *u = l4;
		if ((void *)(u + 1) > end)
			return -1;
		m->sport = bpf_ntohs(u->source);
		m->dport = bpf_ntohs(u->dest);
	}
	return 0;
}

// rate_limited takes a token from the source's bucket when the packet's
// protocol and destination port are under the rate limit; true when the
// bucket is empty (drop).
static __always_inline int rate_limited(struct match_ctx *m, struct gen_settings *s, struct src_key *src) {
	if (!s->rl_rate || (m->proto != IPPROTO_TCP && m->proto != IPPROTO_UDP))
		return 0;
	__u32 pk = m->gen << 16 | m->dport;
	return bpf_map_lookup_elem(&rl_ports, &pk) && !rate_ok(src, s);
}

// verdict counts the packet on the rule it hit (or the default) and
// returns the action.
static __always_inline int verdict(struct match_ctx *m, struct gen_settings *s, __u64 len) {
	__u32 action;
	__u32 cidx;
	if (m->hit >= 0) {
		action = m->action;
		cidx = m->counter;
	} else {
		action = s->default_action;
		cidx = DEFAULT_SLOT;
	}
	count(&counters, cidx, len);
	return action == ACTION_PASS ? XDP_PASS : XDP_DROP;
}

#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_DEST 60
#define MAX_EXT_HDRS 6

struct ext_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct frag_hdr6 {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

static __always_inline int is_v4_mapped(const struct in6_addr *a) {
	return a->in6_u.u6_addr32[0] == 0 && a->in6_u.u6_addr32[1] == 0 && a->in6_u.u6_addr32[2] == bpf_htonl(0xffff);
}

static __noinline int ipv6_policy(struct xdp_md *ctx, __u32 gen, struct gen_settings *s, void *l3, void *end, __u64 len) {
	struct ipv6hdr *ip6 = l3;
	if ((void *)(ip6 + 1) > end) {
		count(&stats, STAT_MALFORMED, len);
		return XDP_DROP;
	}
	count(&stats, STAT_IPV6, len);
	// IPv4-mapped addresses never appear on the wire; one that does would
	// be read as IPv4 by a dual-stack socket and dodge the IPv4 rules.
	if (is_v4_mapped(&ip6->saddr) || is_v4_mapped(&ip6->daddr)) {
		count(&stats, STAT_MALFORMED, len);
		return XDP_DROP;
	}
	struct match_ctx m = {.gen = gen, .hit = -1};
	__builtin_memcpy(m.src6, ip6->saddr.in6_u.u6_addr32, 16);
	__builtin_memcpy(m.dst6, ip6->daddr.in6_u.u6_addr32, 16);
	__u8 nh = ip6->nexthdr;
	void *p = ip6 + 1;
	int first_fragment = 1;
	int i;
#pragma unroll
	for (i = 0; i < MAX_EXT_HDRS; i++) {
		if (nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST || nh == NEXTHDR_AUTH) {
			struct ext_hdr *e = p;
			if ((void *)(e + 1) > end) {
				count(&stats, STAT_MALFORMED, len);
				return XDP_DROP;
			}
			nh = e->nexthdr;
			if (nh == NEXTHDR_AUTH)
				p += ((__u32)e->hdrlen + 2) * 4;
			else
				p += ((__u32)e->hdrlen + 1) * 8;
		} else if (nh == NEXTHDR_FRAGMENT) {
			struct frag_hdr6 *f = p;
			if ((void *)(f + 1) > end) {
				count(&stats, STAT_MALFORMED, len);
				return XDP_DROP;
			}
			nh = f->nexthdr;
			if (f->frag_off & bpf_htons(0xfff8))
				first_fragment = 0;
			p = f + 1;
		} else {
			break;
		}
	}
	if (nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST || nh == NEXTHDR_AUTH || nh == NEXTHDR_FRAGMENT) {
		count(&stats, STAT_MALFORMED, len); // more extension headers than any sane packet
		return XDP_DROP;
	}
	m.proto = nh;
	if (first_fragment && read_ports(&m, nh, p, end)) {
		count(&stats, STAT_MALFORMED, len);
		return XDP_DROP;
	}
	if (first_fragment && nh == IPPROTO_ICMPV6) {
		__u8 *type = p;
		if ((void *)(type + 1) > end) {
			count(&stats, STAT_MALFORMED, len);
			return XDP_DROP;
		}
		// Neighbour discovery (router/neighbour solicitation and
		// advertisement, redirect: types 133-137) always passes: without
		// it no IPv6 packet reaches this link at all, as without ARP. So
		// does multicast listener discovery (130-132, 143; RFC 4890): a
		// snooping switch stops forwarding the neighbour solicitations of
		// a host that no longer answers its queries.
		if ((*type >= 130 && *type <= 137) || *type == 143) {
			count(&stats, STAT_IPV6_ND, len);
			return XDP_PASS;
		}
	}

	struct src_key k = {.a = {m.src6[0], m.src6[1], 0, 0}}; // the source's /64
	if (rate_limited(&m, s, &k)) {
		count(&stats, STAT_RATE_LIMITED, len);
		return XDP_DROP;
	}

	__u32 n = s->count6;
	if (n > MAX_RULES)
		n = MAX_RULES;
	bpf_loop(n, match_rule6, &m, 0);
	return verdict(&m, s, len);
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
	if (proto == bpf_htons(ETH_P_IPV6))
		return ipv6_policy(ctx, gen, s, (void *)(eth + 1), end, len);
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
	if (first_fragment && read_ports(&m, ip->protocol, l4, end)) {
		count(&stats, STAT_MALFORMED, len);
		return XDP_DROP;
	}
	struct src_key k = {.a = {0, 0, bpf_htonl(0xffff), m.src}}; // ::ffff:a.b.c.d
	if (rate_limited(&m, s, &k)) {
		count(&stats, STAT_RATE_LIMITED, len);
		return XDP_DROP;
	}

	__u32 n = s->count;
	if (n > MAX_RULES)
		n = MAX_RULES;
	bpf_loop(n, match_rule, &m, 0);
	return verdict(&m, s, len);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
