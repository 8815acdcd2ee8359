module github.com/outpost-edge/outpost

go 1.26.8

require (
	github.com/klauspost/compress v1.20.4
	gopkg.in/yaml.v3 v3.0.1
)
