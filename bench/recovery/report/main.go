// Command report turns bench/recovery's JSON lines into the tables of RESULTS.md.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log"
	"os"
)

type result struct {
	Name    string  `json:"name"`
	Data    string  `json:"data"`
	Seconds float64 `json:"seconds"`
	Bytes   int64   `json:"bytes"`
	Stored  int64   `json:"stored"`
	Extra   string  `json:"extra"`
}

func main() {
	log.SetFlags(0)
	if len(os.Args) != 2 {
		log.Fatal("usage: report results.jsonl")
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	var rs []result
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			log.Fatalf("%s: %v", sc.Text(), err)
		}
		rs = append(rs, r)
	}
	if err := sc.Err(); err != nil {
		log.Fatal(err)
	}
	var lifeboat, restic float64
	fmt.Println("## Materialize a PIT of the 4 GiB system volume into a raw image")
	fmt.Println()
	fmt.Println("| what | seconds | MB/s (logical) | output allocates | note |")
	fmt.Println("|---|---:|---:|---:|---|")
	for _, r := range rs {
		if r.Name == "recover to HTTP" {
			continue
		}
		mbs := float64(r.Bytes) / 1e6 / r.Seconds
		switch r.Name {
		case "lifeboat materialize":
			lifeboat = mbs
		case "restic restore":
			restic = mbs
		}
		fmt.Printf("| %s | %.1f | %.0f | %.2f GiB | %s |\n", r.Name, r.Seconds, mbs, float64(r.Stored)/(1<<30), r.Extra)
	}
	if lifeboat > 0 && restic > 0 {
		fmt.Printf("\nLifeboat materializes at %.1f× the speed of `restic restore` (the bar: at least 2×).\n", lifeboat/restic)
	}
	fmt.Println()
	fmt.Println("## Recover to HTTP")
	fmt.Println()
	fmt.Println("From the recovery's API call to the recovered VM answering HTTP on its forwarded port (polled")
	fmt.Println("from outside every 100 ms); QEMU with TCG (no KVM here), 2 vCPUs, 1 GiB RAM; the guest boots its own")
	fmt.Println("kernel (direct kernel boot from the recovered disk).")
	fmt.Println()
	fmt.Println("| disk | seconds to HTTP | breakdown from the job's log |")
	fmt.Println("|---|---:|---|")
	for _, r := range rs {
		if r.Name == "recover to HTTP" {
			fmt.Printf("| %s | %.1f | %s |\n", r.Data, r.Seconds, r.Extra)
		}
	}
}
