"""Bounded Jinja rendering: a sandboxed environment whose renders are limited in time,
allocation and output (`environment`), with the size checks it runs before an operator,
call or filter (`checks`). Apart from the code sandbox: loading a workflow loads this,
never the code sandbox."""
