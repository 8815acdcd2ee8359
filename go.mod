module github.com/outpost-edge/outpost

go 1.26.8

require (
	github.com/HdrHistogram/hdrhistogram-go v1.4.0
	github.com/gorilla/websocket v1.5.3
	github.com/mochi-mqtt/server/v2 v2.7.9
	gopkg.in/yaml.v3 v3.0.1
)

require github.com/rs/xid v1.4.0 // indirect
