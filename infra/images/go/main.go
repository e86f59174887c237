package main

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
)

func main() {
	var wg sync.WaitGroup
	sums := make([]int, 10)
	for g := 0; g < 10; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g*10 + 1; i <= g*10+10; i++ {
				sums[g] += i
			}
		}(g)
	}
	wg.Wait()
	total := 0
	for _, s := range sums {
		total += s
	}
	version := strings.Join(strings.Split(runtime.Version(), ".")[:2], ".")
	fmt.Printf("hello from %s: %d\n", version, total)
}
