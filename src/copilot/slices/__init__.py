"""What each source says, one slice per source: BBS (`bbs`), Cloud Controller (`cc`) and route registrars
(`registrar`). A slice stores only its own source's facts, is written only by that source, and reports
the keys each change touched; copilot.views merges the slices into what is routed."""
