package rules

// format_time(ms, layout, zone) must work on gateways without a zoneinfo
// database (minimal images): embed it (about 450 KB in the binary).
import _ "time/tzdata"
