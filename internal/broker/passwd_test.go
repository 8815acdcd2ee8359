package broker

import "testing"

// BenchmarkVerifyPassword measures one password verification per hash
// format: time (ns/op) and memory (B/op) are what each login attempt costs
// the gateway (docs/broker.md, "What a login costs").
//
//	go test -run '^$' -bench VerifyPassword -benchmem -benchtime 20x ./internal/broker/
func BenchmarkVerifyPassword(b *testing.B) {
	argonOld := "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	bc, err := HashPassword([]byte("pw"), HashBcrypt)
	if err != nil {
		b.Fatal(err)
	}
	ar, err := HashPassword([]byte("pw"), HashArgon2id)
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct{ name, hash string }{
		{"bcrypt-10", bc},
		{"argon2id-m7MiB-t5", ar},
		{"argon2id-m19MiB-t2", argonOld},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				verifyPassword(tc.hash, []byte("wrong"))
			}
		})
	}
}
