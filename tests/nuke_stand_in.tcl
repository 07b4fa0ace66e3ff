# A small stand-in for the Tcl commands of a Nuke script (.nk / .gizmo), enough to evaluate gizmos/FRDM.gizmo
# the way Nuke does and print what it built as JSON (tests/test_gizmo_tcl.py reads it).
#
# What it models of Nuke: a node command (`Read {body}`) evaluates its body, where each command is a knob
# assignment (`name value`) or `addUserKnob {type name ...}`; a node with `inputs N` takes its inputs from the
# node stack (input 0 = the top) and pushes itself; `set X [stack 0]` / `push $X` reuse a node; `Gizmo {}`
# opens the group's own graph and `end_group` closes it; `add_layer {layer layer.chan ...}` declares channels.
# What it refuses, as Nuke does: an unknown node class, a user knob set before it is declared, a node asking
# for more inputs than the stack holds. Usage: tclsh nuke_stand_in.tcl FILE.gizmo

set classes {Gizmo Group Input Output Read Copy Switch Write Crop Dot Merge2 Shuffle2}
set builtin_gizmo_knobs {inputs help onCreate tile_color knobChanged note_font}
set stack {}
set order {}
set layers {}
set count 0
set current ""

proc version {args} {}
proc add_layer {spec} { lappend ::layers $spec }
proc stack {i} {
    if {$i >= [llength $::stack]} { error "stack $i: the node stack holds [llength $::stack] node(s)" }
    return [lindex $::stack end-$i]
}
proc push {n} { lappend ::stack $n }
proc end_group {} { set ::stack {} }

# Knob assignments inside a node body. `file` is also a Tcl command: the body's namespace shadows it.
namespace eval ::body {}
proc ::body::file {args} { ::set_knob file {*}$args }
proc ::body::addUserKnob {spec} {
    set type [lindex $spec 0]
    set name [lindex $spec 1]
    lappend ::user($::current) [list $type $name]
    set ::declared($::current,$name) 1
    if {![info exists ::knob($::current,$name)]} { set ::knob($::current,$name) "" }
}
proc ::body_unknown {name args} { ::set_knob $name {*}$args }
namespace eval ::body { namespace unknown ::body_unknown }

proc set_knob {name args} {
    if {[llength $args] != 1} { error "knob $name of $::class($::current): expected one value, got [llength $args]" }
    if {$::class($::current) eq "Gizmo" && [string match frdm_* $name] && ![info exists ::declared($::current,$name)]} {
        error "knob $name of the gizmo is set before addUserKnob declares it"
    }
    set ::knob($::current,$name) [lindex $args 0]
    lappend ::knobs_of($::current) $name
}

proc node {cls body} {
    set id [incr ::count]
    set ::class($id) $cls
    set ::user($id) {}
    set ::knobs_of($id) {}
    set ::current $id
    set ::knob($id,inputs) 1 ;# Nuke's default when a node does not say
    namespace eval ::body $body
    lappend ::order $id
    if {$cls eq "Gizmo"} { set ::stack {} ; return }
    set n $::knob($id,inputs)
    set ::inputs($id) {}
    for {set i 0} {$i < $n} {incr i} {
        if {![llength $::stack]} { error "$cls [node_name $id]: needs $n input(s), the stack is empty" }
        lappend ::inputs($id) [lindex $::stack end]
        set ::stack [lrange $::stack 0 end-1]
    }
    lappend ::stack $id
}
foreach c $classes { proc $c {body} "node $c \$body" }

proc node_name {id} {
    if {[info exists ::knob($id,name)]} { return $::knob($id,name) }
    return $::class($id)
}
proc json {s} {
    return "\"[string map [list \\ \\\\ \" \\\" \n \\n \t \\t \r \\r] $s]\""
}

source [lindex $argv 0]

set out {}
foreach id $order {
    set ins {}
    if {[info exists ::inputs($id)]} { foreach i $::inputs($id) { lappend ins [json [node_name $i]] } }
    set ks {}
    foreach k [lsort -unique [concat $::knobs_of($id) [lmap u $::user($id) {lindex $u 1}]]] {
        lappend ks "[json $k]: [json $::knob($id,$k)]"
    }
    set us [lmap u $::user($id) {format {[%s, %s]} [lindex $u 0] [json [lindex $u 1]]}]
    lappend out [format {{"class": %s, "name": %s, "inputs": [%s], "knobs": {%s}, "user_knobs": [%s]}} \
        [json $::class($id)] [json [node_name $id]] [join $ins ", "] [join $ks ", "] [join $us ", "]]
}
puts "{\"layers\": \[[join [lmap l $layers {json $l}] {, }]\], \"nodes\": \[[join $out {, }]\]}"
