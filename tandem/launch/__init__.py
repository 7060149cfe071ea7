"""Starting and supervising Tandem's processes for `tandem serve`: local
child processes (`local`) or Ray actors (`ray`), with one plan (`spec`), one
restart policy (`supervisor`) and one readiness check (`readiness`); with
`--autoscale`, the planner's loop over the local workers (`autoscale`, its pure
parts in `scaling`)."""
