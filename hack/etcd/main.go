// Command etcd is the etcd 3.6 server, built from its Go module for the
// Kubernetes Cells of the test environment (Debian's etcd 3.4.23 is older than
// Kubernetes 1.34 supports).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
