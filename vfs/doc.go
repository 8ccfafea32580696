// Package vfs is the small filesystem seam the spool (and anything else that
// must survive a crash) writes through: the operating system's filesystem in
// production (Default), and in tests a MemFS that remembers what was fsync'd,
// can Crash() to drop everything that was not, and can inject errors such as
// ENOSPC or EIO into chosen operations.
//
// It also owns Publish, the one way to durably replace a small file: write a
// temporary file, fsync it, rename it over the target, fsync the directory;
// and Datasync, fdatasync(2) where the file supports it, for a small file of
// fixed size rewritten in place (the journal's acknowledged mark).
//
// It does not own file formats, paths or naming policy.
package vfs
