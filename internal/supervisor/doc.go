// Package supervisor runs the gateway's components: native programs
// declared by recipes (YAML files in a directory, see package recipe and
// docs/components.md), each in its own process group and cgroup, with
// ordered start, health checks, restart policy, resource limits, captured
// output, per-component bus credentials and live reload.
//
// # Usage
//
//	s := supervisor.New(supervisor.Options{
//		Logger:    log,
//		Identity:  broker,   // per-component MQTT credentials (optional)
//		Publisher: broker,   // state on outpost/local/components/<name>/state (optional)
//		Bus:       broker,   // MQTT heartbeat health checks (optional)
//	})
//	m := module.Of[supervisor.Config](s) // defaults and validates the section
//	_ = m.Init(ctx, cfg)     // supervisor.Config, the "supervisor:" section
//	_ = s.Start(ctx)         // stops leftovers, loads recipes, starts components
//	s.RegisterHTTP(mux)      // /api/v1/components...
//	defer s.Stop(ctx)        // dependents first, SIGTERM, grace, SIGKILL
//
// Supervisor implements module.Typed[Config] ("supervisor") and
// module.TypedReconfigurable (overrides apply live).
//
// # Guarantees
//
//   - Order: a component starts only when every hard dependency is healthy
//     (or running, when it has no health check); soft dependencies only
//     delay it while they are installing or starting. A hard dependency that
//     stops or restarts stops its dependents, which start again once it is
//     healthy. Stop goes level by level, dependents first.
//   - Containment: each process leads its own process group and is born in
//     its cgroup (v2: CLONE_INTO_CGROUP; v1: forked from a thread moved into
//     the group). Stop sends SIGTERM and SIGCONT to the group and the
//     cgroup's members, waits the grace period, then SIGKILLs everything left
//     (v1 freezes the group first so nothing forks meanwhile). When the main
//     process exits, its leftovers are killed too. The agent is a child
//     subreaper and reaps every descendant it signalled: no orphans, no
//     zombies.
//   - Reporting: exit codes, signals and OOM kills (from the cgroup's
//     oom_kill counter) are recorded in Status.LastExit and the state reason.
//     stdout/stderr go line by line to <log_dir>/<name>.log (rotated by size)
//     and to slog with the component's name.
//   - Restart: always / on-failure / never, exponential backoff with jitter;
//     MaxRestarts within Window marks the component broken (left stopped
//     until Restart or a recipe change). A failed health check past its
//     threshold counts as a failure; a SIGSTOPped process is detected by its
//     next check.
//   - Identity: every start issues fresh bus credentials (Identity.Issue);
//     they are revoked when the process ends and never logged.
//   - Reload: recipe files are watched (internal/fswatch, debounced). Only added,
//     removed and changed components (and hard dependents of changed ones)
//     are restarted. An invalid or cyclic change is rejected with
//     file:line:column and the running version stays.
//   - Containers (kind: container, container_run.go): run through the
//     host's runtime (package container; Docker Engine API), with the same
//     states, health checks, restart policy and dependencies. Images are
//     pinned by digest and loaded from verified archives; credentials reach
//     the container in a mounted file. Containers carry owner labels; a
//     running one with the same spec is re-adopted after an agent crash,
//     others are removed; removed components' containers and images are
//     collected. Without a runtime a container component waits, with the
//     reason, retrying with backoff.
//   - Restart of the agent: no native process is re-adopted. Start stops every process
//     left in the components' cgroups and every process named by a pid file
//     whose start time and boot id still match, then starts components
//     cleanly, so no component runs twice.
//
// # Caveats
//
//   - Without a usable cgroup hierarchy (not root, read-only /sys/fs/cgroup,
//     no memory controller) components run without limits; this is logged
//     once and shown in Health (degraded). Processes that leave their process
//     group (setsid) are then only found while the agent runs.
//   - On cgroup v2 the agent must not sit in a group that has processes and
//     children with controllers ("no internal processes"): run it in a leaf
//     group and point cgroup.parent at a sibling.
//   - A component that writes to stdout after the agent died gets SIGPIPE;
//     the restarted agent replaces it anyway.
//   - Health checks and install/shutdown steps run outside the component's
//     cgroup (they are not limited by its resources).
package supervisor
