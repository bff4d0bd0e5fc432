# kiln.mk -- build machine images with make, one file per stage of the pipe
#
#   template-validate | vm-launch | provision | capture | artifact-post
#
# Each stage's build record is a file target, so make knows what is done,
# runs independent builds in parallel (make -j) and, after a failure, starts
# again from the stage that failed:
#
#   $(KILN_DIR)/NAME.build.json        template-validate -only=NAME TEMPLATE
#   $(KILN_DIR)/NAME.machine.json      vm-launch        (the running machine)
#   $(KILN_DIR)/NAME.provisioned.json  provision
#   $(KILN_DIR)/NAME.artifacts.json    capture          (the images)
#   $(KILN_DIR)/NAME.done.json         artifact-post    (the final record)
#
# Use it from your Makefile (GNU make 4.0 or later; jq is needed too):
#
#   KILN_BUILDS := web db              # the builds, by name
#   KILN_TEMPLATE_web := web.json      # where each one comes from
#   KILN_TEMPLATE_db := db.json
#   KILN_VALIDATE_FLAGS := -var-file=prod.json
#   include /usr/share/kiln/kiln.mk    # after the variables
#
#   all: kiln-all
#   clean: kiln-clean
#
# Set the variables before the include line: the rules are made from them
# when the file is read. Every variable may also be given on the command
# line (make KILN_ON_ERROR=cleanup).
#
# Variables
#   KILN_BUILDS        The record names to build; each one gets the rules
#                      above. Names are unique across templates.
#   KILN_TEMPLATE      The template of every build (default template.json).
#   KILN_TEMPLATE_NAME The template of build NAME, when it is another one.
#   KILN_ONLY_NAME     The template's build that record NAME is made from,
#                      when it has another name (the -only value; default
#                      NAME): one template build can so be made several times
#                      with other variables.
#   KILN_DIR           The folder of the records (default build).
#   KILN_VALIDATE_FLAGS, KILN_VALIDATE_FLAGS_NAME
#                      Extra template-validate flags for every build, and for
#                      build NAME (-var, -var-file...). They are kept in
#                      $(KILN_DIR)/NAME.flags: when they change, the build is
#                      made again from its first stage.
#   KILN_ON_ERROR      template-validate's --on-error (default abort): a stage
#                      that fails leaves the build's machine running, so that
#                      the stage can be fixed and made again on it. cleanup
#                      stops it at once (a new one is started next time).
#   KILN_FORCE         Default -force: make overwrites what it makes, so an
#                      existing output_directory is replaced when a build is
#                      made again. Set it empty to make that an error.
#   KILN_DEPS, KILN_DEPS_NAME
#                      Other files the build records depend on (variable
#                      files, files template-validate reads): a change makes
#                      the build again from its first stage (a new machine).
#   KILN_PROVISION_DEPS, KILN_PROVISION_DEPS_NAME
#                      Files the provisioners read when they run (scripts,
#                      files they upload, playbooks): a change provisions
#                      again, on the same machine while it runs (a failed
#                      build's), on a new one when it is gone (a captured
#                      build's). Every provisioner runs again: keep them
#                      idempotent, or remove NAME.machine.json for a fresh
#                      machine.
#   KILN_FLAGS         Flags for every tool (-q, -v, --color=never,
#                      --log-format=json).
#   KILN_LAUNCH_FLAGS, KILN_PROVISION_FLAGS, KILN_CAPTURE_FLAGS,
#   KILN_POST_FLAGS    Flags for one stage (--max-lifetime=4h, --jobs=2...).
#   KILN_BINDIR        Where the tools are (default: found on PATH).
#   KILN_TEMPLATE_VALIDATE, KILN_VM_LAUNCH, KILN_PROVISION, KILN_CAPTURE,
#   KILN_ARTIFACT_POST The tools themselves (default: the name, in
#                      KILN_BINDIR when set).
#   KILN_JQ            jq, to read machine ids and paths out of records.
#   KILN_RUN_DIR, KILN_CACHE (environment) are the tools' own; see vm-launch(1).
#
# Targets
#   kiln-all           Every build's NAME.done.json.
#   kiln-NAME          One build's NAME.done.json.
#   kiln-stop          Stop the running machines of the records (a failed
#                      build's, left for debugging); keep everything else.
#   kiln-clean         Stop those machines, and remove the records, the
#                      .failed, .tmp and .flags files, the builds' output
#                      directories and the files of the final records'
#                      artifacts (checksum files, boxes...), then
#                      $(KILN_DIR) when it is empty.
#
# Functions, for recipes of your own (a smoke test that boots an image)
#   $(call kiln-stop-machine,RECORD)
#                      Shell code that stops RECORD's machine if it runs.
#
# Failure
#   Every target is written whole or not at all: a tool writes to NAME.STAGE
#   .json.tmp, renamed when it exits 0. When it fails, its error record is
#   kept as $(KILN_DIR)/NAME.STAGE.failed (the tool has said why on stderr),
#   and the target is not made. Fix the cause and run make again: the stage
#   runs again from the record before it. After a provision failure the
#   machine runs on (KILN_ON_ERROR=abort; the error says how to log in) and
#   is provisioned again; vm-launch --stop or make kiln-stop ends it.

kiln-saved-goal := $(.DEFAULT_GOAL)

KILN_DIR ?= build
KILN_BUILDS ?=
KILN_TEMPLATE ?= template.json
KILN_ON_ERROR ?= abort
KILN_FORCE ?= -force
KILN_VALIDATE_FLAGS ?=
KILN_DEPS ?=
KILN_PROVISION_DEPS ?=
KILN_FLAGS ?=
KILN_LAUNCH_FLAGS ?=
KILN_PROVISION_FLAGS ?=
KILN_CAPTURE_FLAGS ?=
KILN_POST_FLAGS ?=
KILN_BINDIR ?=
KILN_TEMPLATE_VALIDATE ?= $(if $(KILN_BINDIR),$(KILN_BINDIR)/)template-validate
KILN_VM_LAUNCH ?= $(if $(KILN_BINDIR),$(KILN_BINDIR)/)vm-launch
KILN_PROVISION ?= $(if $(KILN_BINDIR),$(KILN_BINDIR)/)provision
KILN_CAPTURE ?= $(if $(KILN_BINDIR),$(KILN_BINDIR)/)capture
KILN_ARTIFACT_POST ?= $(if $(KILN_BINDIR),$(KILN_BINDIR)/)artifact-post
KILN_JQ ?= jq

# The files kiln-clean removes, as shell globs.
kiln-files = $(foreach s,build machine provisioned artifacts done,\
  $(KILN_DIR)/*.$s.json $(KILN_DIR)/*.$s.json.tmp $(KILN_DIR)/*.$s.failed) \
  $(KILN_DIR)/*.flags $(KILN_DIR)/*.flags.new

# Sets the shell's arguments to the files of kiln-files that exist; exits
# (successfully) when there is none.
kiln-existing = set --; for f in $(kiln-files); do [ ! -e "$$f" ] || set -- "$$@" "$$f"; done; \
  [ $$\# -gt 0 ] || exit 0

# $(call kiln-validate-cmd,NAME): the command that makes NAME's build record.
kiln-validate-cmd = $(KILN_TEMPLATE_VALIDATE) --on-error=$(KILN_ON_ERROR) \
  $(KILN_FORCE) $(KILN_VALIDATE_FLAGS) $(KILN_VALIDATE_FLAGS_$1) \
  -only=$(or $(KILN_ONLY_$1),$1) $(or $(KILN_TEMPLATE_$1),$(KILN_TEMPLATE))

# $(call kiln-run,COMMAND,INPUT[,TARGET]): runs COMMAND < INPUT into TARGET
# (default $@) through TARGET.tmp; on failure the error record goes to
# NAME.STAGE.failed and the recipe fails. A tool that writes no record
# (template-validate with no build left) fails too.
kiln-run = $(call kiln-run-to,$1,$2,$(or $3,$@),$(basename $(or $3,$@)).failed)
define kiln-run-to
trap 'rm -f "$3.tmp"' HUP INT TERM; \
$1 $(if $2,< $2) > $3.tmp; rc=$$?; \
if [ $$rc -eq 0 ] && [ -s $3.tmp ]; then \
  mv -f $3.tmp $3 && rm -f $4; \
else \
  [ -s $3.tmp ] || echo "kiln.mk: $3: $(firstword $1) wrote no record" >&2; \
  mv -f $3.tmp $4; rm -f $3; \
  echo "kiln.mk: $3 not made: $(firstword $1) failed (exit $$rc); its record is $4" >&2; \
  [ $$rc -ne 0 ] || rc=1; exit $$rc; \
fi
endef

# $(call kiln-machine-id,RECORD): the qemu machine id in RECORD (shell).
kiln-machine-id = $(KILN_JQ) -r 'if .machine.driver? == "qemu" then .machine.id else empty end' $1
# $(call kiln-gone,RECORD): true when RECORD has a qemu machine that no longer
# runs (a null builder's host is never gone).
kiln-gone = { id=$$($(call kiln-machine-id,$1)) || exit 1; \
  list=$$($(KILN_VM_LAUNCH) --list) || exit 1; \
  [ -n "$$id" ] && ! printf '%s\n' "$$list" | cut -f1 | grep -qxF "$$id"; }

# Non-empty under make -n.
kiln-dry-run = $(findstring n,$(firstword -$(MAKEFLAGS)))

kiln-say = echo "kiln.mk: $1" >&2

# $(call kiln-stop-machine,RECORD): shell code that stops RECORD's machine
# when it still runs (for recipes of your own, such as a smoke test's).
kiln-stop-machine = if ! $(call kiln-gone,$1) && id=$$($(call kiln-machine-id,$1)) && [ -n "$$id" ]; then \
  $(KILN_VM_LAUNCH) $(KILN_FLAGS) --stop "$$id"; fi

# Makes $(KILN_DIR)/$1.flags, $(KILN_DIR)/$1.build.json and names the build's
# other records so that make never takes them for intermediate files.
define kiln-build-rules
$(KILN_DIR)/$1.flags: kiln-FORCE
	$$(if $$(kiln-dry-run),,$$(shell mkdir -p $$(@D))$$(file >$$@.new,$$(call kiln-validate-cmd,$1)))
	@cmp -s $$@.new $$@ 2>/dev/null && rm -f $$@.new || mv -f $$@.new $$@

$(KILN_DIR)/$1.build.json: $(or $(KILN_TEMPLATE_$1),$(KILN_TEMPLATE)) \
    $(KILN_DIR)/$1.flags $(KILN_DEPS) $(KILN_DEPS_$1) \
    | $(KILN_PROVISION_DEPS) $(KILN_PROVISION_DEPS_$1)
	@$$(call kiln-say,$1: template-validate)
	@$$(call kiln-run,$$(call kiln-validate-cmd,$1) $(KILN_FLAGS))

$(KILN_DIR)/$1.provisioned.json: $(KILN_PROVISION_DEPS) $(KILN_PROVISION_DEPS_$1)
$(KILN_DIR)/$1.machine.json $(KILN_DIR)/$1.artifacts.json $(KILN_DIR)/$1.done.json:

.PHONY: kiln-$1
kiln-$1: $(KILN_DIR)/$1.done.json
endef

$(foreach b,$(KILN_BUILDS),$(eval $(call kiln-build-rules,$b)))

# vm-launch: a machine still running from an older record of this build is
# stopped first.
$(KILN_DIR)/%.machine.json: $(KILN_DIR)/%.build.json
	@if [ -e $@ ]; then $(call kiln-stop-machine,$@); fi
	@$(call kiln-say,$*: vm-launch)
	@$(call kiln-run,$(KILN_VM_LAUNCH) $(KILN_FLAGS) $(KILN_LAUNCH_FLAGS),$<)

# provision: on the machine of the record while it runs, else on a new one
# (the build was captured, or its machine's lifetime ran out).
$(KILN_DIR)/%.provisioned.json: $(KILN_DIR)/%.machine.json
	@if $(call kiln-gone,$<); then \
	  $(call kiln-say,$*: the machine of $< is gone; vm-launch again); \
	  $(call kiln-run,$(KILN_VM_LAUNCH) $(KILN_FLAGS) $(KILN_LAUNCH_FLAGS),$(KILN_DIR)/$*.build.json,$<); \
	fi
	@$(call kiln-say,$*: provision)
	@$(call kiln-run,$(KILN_PROVISION) $(KILN_FLAGS) $(KILN_PROVISION_FLAGS),$<)

# capture: needs the provisioned machine; when it is gone, the provisioned
# record is no use any more and is removed, so that make provisions again.
$(KILN_DIR)/%.artifacts.json: $(KILN_DIR)/%.provisioned.json
	@if $(call kiln-gone,$<); then \
	  $(call kiln-say,$*: the machine of $< is gone; removing it: run make again to provision a new one); \
	  rm -f $<; exit 1; fi
	@$(call kiln-say,$*: capture)
	@$(call kiln-run,$(KILN_CAPTURE) $(KILN_FLAGS) $(KILN_CAPTURE_FLAGS),$<)

$(KILN_DIR)/%.done.json: $(KILN_DIR)/%.artifacts.json
	@$(call kiln-say,$*: artifact-post)
	@$(call kiln-run,$(KILN_ARTIFACT_POST) $(KILN_FLAGS) $(KILN_POST_FLAGS),$<)

.PHONY: kiln-all kiln-stop kiln-clean kiln-FORCE
kiln-FORCE:
kiln-all: $(foreach b,$(KILN_BUILDS),$(KILN_DIR)/$b.done.json)

# The machines of every record here that still run, once each.
kiln-stop:
	@$(kiln-existing); \
	ids=$$(cat "$$@" | $(KILN_JQ) -R -r 'fromjson? | select(.machine.driver? == "qemu" and .machine.state? != "stopped") | .machine.id' | sort -u) || exit 1; \
	live=$$($(KILN_VM_LAUNCH) --list) || exit 1; live=$$(printf '%s\n' "$$live" | cut -f1); set --; \
	for id in $$ids; do \
	  if printf '%s\n' "$$live" | grep -qxF "$$id"; then set -- "$$@" --stop "$$id"; fi; \
	done; \
	[ $$# -eq 0 ] || $(KILN_VM_LAUNCH) $(KILN_FLAGS) "$$@"

kiln-clean: kiln-stop
	@$(kiln-existing); \
	for f in "$$@"; do case $$f in *.done.json) cat "$$f" ;; esac; done | \
	  $(KILN_JQ) -R -r 'fromjson? | .artifacts[]?.files[]?.path // empty' | \
	  while IFS= read -r f; do rm -f "$$f"; done; \
	cat "$$@" | $(KILN_JQ) -R -r 'fromjson? | .build.builder.output_directory? // empty' | sort -u | \
	  while IFS= read -r d; do case $$d in /|"") ;; *) rm -rf "$$d" ;; esac; done; \
	rm -f "$$@"; rmdir $(KILN_DIR) 2>/dev/null; :

.DEFAULT_GOAL := $(kiln-saved-goal)
