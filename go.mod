module github.com/outpost-edge/outpost

go 1.26.8
