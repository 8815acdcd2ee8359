package queue_test

import (
	"context"
	"fmt"
	"os"

	"github.com/outpost-edge/outpost/internal/queue"
)

// A lane's life: append durably, read, acknowledge on the cloud's PUBACK.
func Example() {
	dir, _ := os.MkdirTemp("", "queue-example")
	defer os.RemoveAll(dir)

	q, err := queue.Open(queue.Config{Dir: dir, OnFull: queue.RejectNew}, queue.Options{Name: "alarms"})
	if err != nil {
		panic(err)
	}
	defer q.Close()

	ctx := context.Background()
	seq, _ := q.Append(ctx, []byte("door open")) // returns once fsynced
	done := make(chan struct{})
	q.AppendAsync([]byte("door closed"), func(seq uint64, err error) { close(done) }) // pipelined
	<-done

	r1, _ := q.Next(ctx)
	r2, _ := q.Next(ctx)
	q.Ack(r2.Seq) // out of order: nothing is removed yet
	fmt.Println(seq, string(r1.Data), string(r2.Data), q.Stats().Depth)
	q.Ack(r1.Seq)
	fmt.Println(q.Stats().Depth)
	// Output:
	// 1 door open door closed 1
	// 0
}
