module github.com/outpost-edge/outpost

go 1.26.8

require (
	github.com/VictoriaMetrics/metrics v1.45.0
	go.etcd.io/bbolt v1.4.3
	golang.org/x/sys v0.50.0
	gopkg.in/yaml.v3 v3.0.1
)

require (
	github.com/valyala/fastrand v1.1.0 // indirect
	github.com/valyala/histogram v1.2.0 // indirect
)
