// Package rawio reads and writes non-blocking sockets with raw system calls
// (recvfrom and sendto) instead of read and write through the runtime's
// syscall bookkeeping (entersyscall and exitsyscall), which a call that
// cannot block does not need. Under load that bookkeeping lets the
// runtime's monitor take the processor from a goroutine in a system call
// and wake another thread for it: wake-ups that dominate a proxy's cost on
// small machines.
package rawio
