//go:build linux

package netns

// The syscall package has no SYS_SETNS for s390x.
const sysSetns = 339
