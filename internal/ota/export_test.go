package ota

// SetPanicHook makes the updater panic where f does (f gets the step
// name); it returns a function that removes the hook.
func SetPanicHook(f func(step string)) func() {
	panicHook = f
	return func() { panicHook = nil }
}
