// Package ota is Outpost's self-updater: signed releases (TUF), delta or
// full download with HTTP Range resume, atomic install next to the running
// binary, restart into the new version, a health-gated commit and automatic
// rollback. The user manual is docs/ota.md; this comment is the
// integrator's.
//
// # Pieces
//
//   - internal/ota/tuf: TUF metadata, verifying client, publisher repo.
//   - internal/ota/delta: bsdiff patches with zstd streams (streaming apply).
//   - internal/ota/release: `outpost release add|sign` (full + deltas, into
//     the targets role or a delegated one).
//   - this package: Config (the `ota:` YAML section), Boot/Trial.Gate (the
//     process model below), Prestart (the service manager hook), Updater
//     (the "ota" module.Typed: check loop, download, stage, install) and
//     its HTTP API (Register).
//
// # Process model
//
// The agent runs under a service manager that starts it again whenever it
// exits (systemd Restart=always; examples/systemd/outpost.service). Files:
//
//	<binary>           the installed version, replaced only by rename
//	<binary>.prev      the version before it (hard link), kept for rollback
//	.<name>.new        the staged new binary, next to <binary> (same fs)
//	<staging_dir>/     downloads/*.part (resumable), metadata/ (TUF cache)
//	<state_file>       JSON, written atomically (tmp, fsync, rename, fsync dir)
//
// An update moves through phases recorded in the state file before each
// step (see Phase): idle → downloading → installing → trial → idle, or
// trial → rolling_back → idle. The integrator wires it like this (a tested
// version of this wiring for internal/agent and cmd/outpost/cmd_run.go was
// handed over with the branch):
//
//	// cmd_run.go, before anything else:
//	trial, err := ota.Boot(ctx, cfg.OTA, ota.BootOptions{Log: log})
//	if err != nil { log.Error("ota boot", "err", err) } // keep running
//
//	// agent registry: section "ota" → &cfg.OTA, after telemetry
//	register("ota", func(c *Config) *ota.Config { return &c.OTA }, (*Agent).newOTA, "telemetry"),
//	// newOTA: the module, its API on the telemetry mux, a graceful restart
//	a.OTA = ota.New(ota.Options{Log: log, Metrics: set, Restart: func(c ota.Config) {
//		a.Stop(stopCtx) // drain, flush queues
//		ota.Restart(c)  // exec, or exit(ExitRestart) for systemd
//	}})
//	a.route(a.OTA.Register) // POST /api/v1/update/check|apply, GET .../status
//
//	// cmd_run.go, after agent.New: gate a trial version on /readyz health
//	if trial != nil {
//		go func() {
//			<-a.Ready
//			var re *ota.RestartError
//			if err := trial.Gate(ctx, allModulesReady); errors.As(err, &re) {
//				a.Stop(stopCtx)
//				ota.Restart(cfg.OTA)
//			}
//		}()
//	}
//	err = a.Run(ctx) // until SIGTERM/SIGINT cancels ctx
//	if trial != nil && err == nil && ctx.Err() != nil {
//		trial.Stopped() // a graceful stop is not a failed attempt
//	}
//
// Boot settles whatever a restart, crash or power cut interrupted: an
// install is finished or undone by comparing the installed binary's hash
// with the state; a version on trial has one more start attempt counted
// (before anything else runs), and past max_attempts the previous binary is
// restored, the version marked bad and the agent restarted into the
// previous version. Trial.Gate commits the version once ready() has been
// true for stability_window (within start_deadline of the start), or fails
// the attempt: the agent restarts, and the last failed attempt rolls back.
// A crash or crash loop needs no code: the process dies, the service
// manager starts it again, and Boot counts the attempt. A version that dies
// before Boot (during package initialisation) is counted by Prestart, which
// systemd runs from <binary>.prev (known good) before every start.
//
// Restart into another version is "exec" (syscall.Exec of <binary>, same
// pid: for service managers that watch the pid, or none) or "exit" (exit
// status ExitRestart = 75, and the service manager starts <binary> again);
// "auto" picks exit under systemd ($INVOCATION_ID) and exec elsewhere.
//
// In exec mode a version on trial runs under the trial watchdog
// (watchdog.go): the process execs <binary>.prev (the known-good previous
// version) with $OUTPOST_OTA_WATCHDOG set; its Boot counts each start, runs
// <binary> as a child (restart mode exit, $OUTPOST_OTA_TRIAL_CHILD), starts
// it again after an exit or crash, rolls back when the attempts run out,
// and once the state says committed, stops the child gracefully and execs
// <binary>. So rollback needs no service manager.
//
// A graceful stop during the trial (SIGTERM/SIGINT) is not an attempt: the
// caller reports it with Trial.Stopped after its modules stopped, and the
// next start is not counted.
//
// # Guarantees
//
//   - Nothing is installed unless it verifies: TUF metadata (signatures
//     and thresholds, versions never decrease, expiry, snapshot
//     consistency), the target's length and hashes (downloads are cut at
//     the signed length), and the resulting binary's signed SHA-256 after
//     decompression or patching.
//   - The binary path always holds a complete executable (rename), and it
//     is always either the previous or the new version.
//   - A kill -9 or power cut at any step resumes (downloads continue with
//     Range from the bytes on disk) or rolls back deterministically on the
//     next start; the crash tests kill the agent at every step.
//   - A version that failed its gate is recorded in the state file's bad
//     list and never installed automatically again. Versions only go up
//     (semantic versioning), so a signed older release cannot be pushed.
//
// # Caveats
//
// The updater replaces one binary, not its configuration: a new version must
// accept the previous version's config. The watchdog costs one more
// graceful restart when the trial ends (the agent becomes a single process
// again). Bad versions are remembered per gateway; Updater.ForgetBad (the
// API's DELETE /api/v1/update/bad) clears them.
package ota
