//go:build !linux

package gozero

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }
