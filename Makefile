# omnibus — one non-recursive Makefile. Targets: all (default), deps, test,
# check (tests under ASan+UBSan), fuzz, bench, run, install, clean.
# Quiet by default; V=1 shows every command.

PREFIX ?= /usr/local
DESTDIR ?=
BUILD ?= build
BINDIR ?= bin
CC ?= cc
FUZZ_TIME ?= 30

# Debian packages the project builds, tests and benchmarks with.
DEBS := build-essential pkg-config libzmq3-dev libmsgpack-dev libcjson-dev \
	libsqlite3-dev libcurl4-openssl-dev libmicrohttpd-dev libssl-dev \
	libpcre2-dev libgmime-3.0-dev libsystemd-dev libcmocka-dev \
	jq sqlite3 curl python3 clang libclang-rt-14-dev \
	libyajl-dev libjansson-dev prometheus wrk

# Libraries every binary links (pkg-config names); evaluated only when used,
# so `make deps` works before they are installed.
PKGS := libzmq msgpack libcjson libcrypto libsystemd sqlite3 libpcre2-8 libcurl libmicrohttpd gmime-3.0
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS))
PKG_LIBS = $(shell pkg-config --libs $(PKGS)) -lm

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wformat=2
CFLAGS ?= -O2 -g
ifeq ($(SAN),1)
CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) $(PKG_CFLAGS) -Ilib -MMD -MP

ifeq ($(V),1)
Q :=
else
Q := @
endif

LIB_SRC := $(wildcard lib/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
LIB_A := $(BUILD)/libomni.a

TOOLS := $(notdir $(wildcard cmd/omni-*))
TOOL_BINS := $(TOOLS:%=$(BINDIR)/%)

UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

BENCH_SRC := $(filter-out bench/json_choice.c,$(wildcard bench/*.c))
BENCH_BINS := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all deps test check fuzz bench run install clean chaos
all: $(TOOL_BINS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC    $<")
	$(Q)$(CC) $(ALL_CFLAGS) -c $< -o $@

$(LIB_A): $(LIB_OBJ)
	@$(if $(Q),echo "  AR    $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(BINDIR)/omni-%: $(BUILD)/cmd/omni-%/main.o $(LIB_A)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(LIB_A)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(shell pkg-config --libs cmocka)

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIB_A)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/bench/json_choice: bench/json_choice.c lib/utf8.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC    $@")
	$(Q)$(CC) -std=c11 -D_GNU_SOURCE -O2 -o $@ $^ $(shell pkg-config --cflags --libs libcjson yajl jansson)

# Installs what is missing; touches nothing when all is there.
deps:
	@missing=$$(for p in $(DEBS); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -z "$$missing" ]; then echo "deps: all installed"; exit 0; fi; \
	echo "deps: installing" $$missing; \
	SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	$$SUDO apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing

test: $(TOOL_BINS) $(UNIT_BINS)
	@BIN=$(abspath $(BINDIR)) UNIT=$(abspath $(BUILD)/tests) tests/run

check:
	$(Q)$(MAKE) --no-print-directory BUILD=build/san BINDIR=build/san/bin SAN=1 test

FUZZ_BIN := $(BUILD)/fuzz/fuzz_envelope
$(FUZZ_BIN): tests/fuzz/fuzz_envelope.c $(LIB_SRC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZ  $@")
	$(Q)clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
		$(shell pkg-config --cflags $(PKGS)) -Ilib -o $@ $^ $(PKG_LIBS)

fuzz: $(FUZZ_BIN)
	@mkdir -p $(BUILD)/fuzz/corpus
	$(FUZZ_BIN) -max_total_time=$(FUZZ_TIME) -max_len=4096 -print_final_stats=1 \
		$(BUILD)/fuzz/corpus tests/fuzz/seeds

bench: $(TOOL_BINS) $(BENCH_BINS) $(BUILD)/bench/json_choice
	@BIN=$(abspath $(BINDIR)) BENCH=$(abspath $(BUILD)/bench) bench/run

# The long chaos run: kill -9 of random stages under load (tests/chaos/run).
chaos: $(TOOL_BINS)
	@BIN=$(abspath $(BINDIR)) tests/chaos/run --messages 30000 --kills 40

run: $(TOOL_BINS)
	@BIN=$(abspath $(BINDIR)) pipelines/local

# Binaries, systemd units, example settings (never over ones already there),
# and the docs. SYSCONFDIR is where /etc/omnibus lives.
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
install: $(TOOL_BINS)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/omnibus/credentials \
		$(DESTDIR)$(PREFIX)/share/doc/omnibus $(DESTDIR)$(PREFIX)/share/omnibus/kb
	install -m 755 $(TOOL_BINS) $(DESTDIR)$(PREFIX)/bin/
	for u in systemd/*.service systemd/*.target; do \
		sed -e 's|/usr/local|$(PREFIX)|g' -e 's|/etc/omnibus|$(SYSCONFDIR)/omnibus|g' $$u \
			>$(DESTDIR)$(UNITDIR)/$$(basename $$u); \
	done
	for f in examples/etc/*.env examples/rules.conf examples/agents.conf; do \
		t=$(DESTDIR)$(SYSCONFDIR)/omnibus/$$(basename $$f); \
		[ -e $$t ] || install -m 640 $$f $$t; \
	done
	chmod 700 $(DESTDIR)$(SYSCONFDIR)/omnibus/credentials
	install -m 644 examples/etc/credentials/README $(DESTDIR)$(SYSCONFDIR)/omnibus/credentials/README
	install -m 644 README.md docs/*.md $(DESTDIR)$(PREFIX)/share/doc/omnibus/
	install -m 644 examples/kb/*.md $(DESTDIR)$(PREFIX)/share/omnibus/kb/

clean:
	rm -rf build bin

-include $(LIB_OBJ:.o=.d) $(TOOLS:%=$(BUILD)/cmd/%/main.d) $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/unit/%.d) $(BENCH_SRC:%.c=$(BUILD)/%.d)
.SECONDARY:
