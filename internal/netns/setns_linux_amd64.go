//go:build linux

package netns

// The syscall package has no SYS_SETNS for amd64.
const sysSetns = 308
