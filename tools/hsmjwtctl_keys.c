/* hsmjwtctl's key commands (SPEC §6): the key set as the token holds it,
 * and the lifecycle operations on it.  Each operation reads the token
 * afresh (keys_lifecycle.c), so a daemon or another hsmjwtctl that changed
 * it a moment ago is taken into account; running daemons pick the change
 * up from the token within 5 s. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "hsmjwt/keystate.h"

#include "hsmjwtctl.h"

/* Shown user input (a kid that is not in the token) is cut here. */
#define CTL_SHOWN_MAX 100

const char *ctl_key_algs(void)
{
	static char list[128];
	size_t len = 0;

	list[0] = '\0';
	for (int a = JWS_ALG_INVALID + 1; a < JWS_ALG_COUNT && len < sizeof(list); a++)
		if (hsm_alg_supported((enum jws_alg)a) && jws_alg_name((enum jws_alg)a) != NULL)
			len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s", len ? "|" : "",
						jws_alg_name((enum jws_alg)a));
	return list;
}

/* --alg's value: 0 and *ret_alg, or -1 after a message. */
static int ctl_keys_parse_alg(const char *name, enum jws_alg *ret_alg)
{
	enum jws_alg alg;

	if (jws_alg_from_name(name, &alg) < 0 || !hsm_alg_supported(alg)) {
		fprintf(stderr, "hsmjwtctl: `%.*s' is not an algorithm hsmjwt holds keys for (%s)\n", CTL_SHOWN_MAX,
			name, ctl_key_algs());
		return -1;
	}
	*ret_alg = alg;
	return 0;
}

static int ctl_keys_configured(const struct ctl *ctl, enum jws_alg alg)
{
	for (size_t a = 0; a < ctl->cfg.algorithm_count; a++)
		if (ctl->cfg.algorithms[a] == alg)
			return 1;
	return 0;
}

/* A kid named on the command line and absent from the token. */
static void ctl_keys_unknown(const char *kid)
{
	fprintf(stderr, "hsmjwtctl: no key `%.*s' in the token (hsmjwtctl keys list shows them)\n", CTL_SHOWN_MAX, kid);
}

/* The token's keys and kid's entry among them, read before a command on
 * one key so that its messages can name the key's algorithm and state:
 * 0, or -1 after a message. */
static int ctl_keys_find(struct ctl *ctl, const char *kid, int64_t now, struct keys **ret_keys,
			 const struct keys_entry **ret_entry)
{
	struct keys *keys = NULL;
	const struct keys_entry *entry;

	if (ctl_load_keys(ctl, now, &keys) < 0)
		return -1;
	entry = keys_find(keys, kid);
	if (entry == NULL) {
		ctl_keys_unknown(kid);
		keys_release(keys);
		return -1;
	}
	*ret_keys = keys;
	*ret_entry = entry;
	return 0;
}

/* Every key as keys_entry_to_json shows it, in the set's order: one source
 * for the table and for --json, so the two never disagree. */
static int ctl_keys_json(const struct ctl *ctl, const struct keys *keys, json_t **ret_list)
{
	json_t *list = json_array();
	int r = -ENOMEM;

	if (list == NULL)
		goto out;
	for (size_t i = 0; i < keys->count; i++) {
		json_t *entry = NULL;
		r = keys_entry_to_json(keys, &keys->entries[i], &ctl->cfg, &entry);
		if (r < 0)
			goto out;
		if (json_array_append_new(list, entry) < 0) {
			r = -ENOMEM;
			goto out;
		}
	}
	*ret_list = list;
	list = NULL;
	r = 0;
out:
	json_decref(list);
	return r;
}

/* An entry's time member ("-" when the entry has none). */
static const char *ctl_keys_member_time(const json_t *entry, const char *name, char buf[CTL_TIME_MAX])
{
	const json_t *t = json_object_get(entry, name);

	return ctl_time(json_is_integer(t) ? (int64_t)json_integer_value(t) : 0, buf);
}

int cmd_keys_list(struct ctl *ctl, int argc, char **argv)
{
	static const char *const flags[] = { "--json", NULL };
	char created[CTL_TIME_MAX], activate[CTL_TIME_MAX], retired[CTL_TIME_MAX], destroy[CTL_TIME_MAX];
	struct keys *keys = NULL;
	json_t *list = NULL, *entry;
	size_t i;
	int status = 1;

	if (ctl_check_options(argc, argv, NULL, flags) < 0) {
		fprintf(stderr, "usage: hsmjwtctl keys list [--json]\n");
		return 2;
	}
	if (ctl_load_keys(ctl, (int64_t)time(NULL), &keys) < 0)
		return 1;
	if (ctl_keys_json(ctl, keys, &list) < 0) {
		fprintf(stderr, "hsmjwtctl: out of memory\n");
		goto out;
	}
	if (ctl_flag(argc, argv, flags, "--json")) {
		status = ctl_print_json(list);
		goto out;
	}
	printf("%-43s %-6s %-7s %-7s %-9s %-20s %-20s %-20s %s\n", "KID", "ALG", "STATE", "SIGNING", "PUBLISHED",
	       "CREATED", "ACTIVATE_AT", "RETIRED_AT", "DESTROY_AFTER");
	json_array_foreach(list, i, entry) {
		printf("%-43s %-6s %-7s %-7s %-9s %-20s %-20s %-20s %s\n",
		       json_string_value(json_object_get(entry, "kid")),
		       json_string_value(json_object_get(entry, "alg")),
		       json_string_value(json_object_get(entry, "state")),
		       json_is_true(json_object_get(entry, "signing")) ? "yes" : "no",
		       json_is_true(json_object_get(entry, "published")) ? "yes" : "no",
		       ctl_keys_member_time(entry, "created", created),
		       ctl_keys_member_time(entry, "activate_at", activate),
		       ctl_keys_member_time(entry, "retired_at", retired),
		       ctl_keys_member_time(entry, "destroy_after", destroy));
	}
	status = 0;
out:
	json_decref(list);
	keys_release(keys);
	return status;
}

int cmd_keys_generate(struct ctl *ctl, int argc, char **argv)
{
	static const char *const known[] = { "--alg", NULL };
	const char *name = NULL;
	const struct keys_entry *signer;
	struct keys *keys = NULL;
	struct keys_change change;
	enum jws_alg alg;
	int64_t now;
	int status = 1, r;

	for (int i = 0; i < argc; i++)
		if (strcmp(argv[i], "--force") == 0) {
			fprintf(stderr, "hsmjwtctl: keys generate has no --force any more: it only bootstraps an "
					"algorithm without a signing key.  A further key comes from rotation, which "
					"publishes it before it signs: hsmjwtctl keys rotate --alg ALG [--immediate]\n"
					"usage: hsmjwtctl keys generate --alg %s\n", ctl_key_algs());
			return 2;
		}
	if (ctl_check_options(argc, argv, known, NULL) < 0 || (name = ctl_option(argc, argv, NULL, "--alg")) == NULL) {
		fprintf(stderr, "usage: hsmjwtctl keys generate --alg %s\n", ctl_key_algs());
		return 2;
	}
	if (ctl_keys_parse_alg(name, &alg) < 0)
		return 2;
	now = (int64_t)time(NULL);
	if (ctl_load_keys(ctl, now, &keys) < 0)
		return 1;
	signer = keys_signer(keys, alg);
	if (signer != NULL) {
		fprintf(stderr, "hsmjwtctl: %s already has a signing key (kid %s); a new one is made by rotation, "
				"which publishes it before it signs: hsmjwtctl keys rotate --alg %s\n",
			jws_alg_name(alg), signer->hsm.kid, jws_alg_name(alg));
		goto out;
	}
	/* Without a signer, an immediate rotation is the bootstrap: it
	 * generates a key active at once, or promotes a next key that is
	 * already waiting (another process rotated meanwhile). */
	r = keys_rotate(ctl->hsm, &ctl->cfg, alg, 1, now, &change);
	if (r < 0) {
		fprintf(stderr, "hsmjwtctl: generating a %s key failed (error %d, see the log line above)\n",
			jws_alg_name(alg), r);
		goto out;
	}
	if (!change.generated)
		fprintf(stderr, "hsmjwtctl: %s had a next key waiting: %s signs now instead of a new key\n",
			jws_alg_name(alg), change.kid);
	if (!ctl_keys_configured(ctl, alg))
		fprintf(stderr, "hsmjwtctl: warning: %s is not one of the configured algorithms: the daemon keeps "
				"the key for verification but neither signs with it nor rotates it\n", jws_alg_name(alg));
	printf("%s\n", change.kid);
	status = 0;
out:
	keys_release(keys);
	return status;
}

/* One algorithm's rotation and its line of output: 0, or 1 after a message. */
static int ctl_keys_rotate_one(struct ctl *ctl, enum jws_alg alg, int immediate)
{
	char at[CTL_TIME_MAX];
	struct keys_change change;
	int r;

	/* Read the clock per algorithm: generating an RSA key takes seconds,
	 * and the next one's activate_at counts from its own creation. */
	r = keys_rotate(ctl->hsm, &ctl->cfg, alg, immediate, (int64_t)time(NULL), &change);
	if (r == -EEXIST) {
		fprintf(stderr, "hsmjwtctl: %s: a rotation is already under way: %s activates at %s "
				"(--immediate activates it now)\n",
			jws_alg_name(alg), change.kid, ctl_time(change.record.activate_at, at));
		return 1;
	}
	if (r < 0) {
		fprintf(stderr, "hsmjwtctl: %s: the rotation failed (error %d, see the log line above)\n",
			jws_alg_name(alg), r);
		return 1;
	}
	if (change.record.state == KEYSTATE_ACTIVE)
		printf("%s %s active now (immediate)\n", jws_alg_name(alg), change.kid);
	else
		printf("%s %s %s activates at %s\n", jws_alg_name(alg), change.kid, keystate_name(change.record.state),
		       ctl_time(change.record.activate_at, at));
	return 0;
}

int cmd_keys_rotate(struct ctl *ctl, int argc, char **argv)
{
	static const char *const known[] = { "--alg", NULL };
	static const char *const flags[] = { "--immediate", NULL };
	enum jws_alg algs[CONFIG_MAX_ALGS];
	const char *name;
	size_t count = 0;
	int status = 0, immediate;

	if (ctl_check_options(argc, argv, known, flags) < 0) {
		fprintf(stderr, "usage: hsmjwtctl keys rotate [--alg %s] [--immediate]\n", ctl_key_algs());
		return 2;
	}
	name = ctl_option(argc, argv, flags, "--alg");
	immediate = ctl_flag(argc, argv, flags, "--immediate");
	if (name != NULL) {
		if (ctl_keys_parse_alg(name, &algs[0]) < 0)
			return 2;
		count = 1;
	} else {
		for (count = 0; count < ctl->cfg.algorithm_count && count < CONFIG_MAX_ALGS; count++)
			algs[count] = ctl->cfg.algorithms[count];
	}
	if (ctl_open(ctl) < 0)
		return 1;
	/* Every algorithm is tried even after one failed: each is independent. */
	for (size_t a = 0; a < count; a++)
		if (ctl_keys_rotate_one(ctl, algs[a], immediate) != 0)
			status = 1;
	return status;
}

/* KID and the optional FLAG in any order: 0, or -1 after a message.
 * A kid is base64url, so it may start with '-' or even "--" (one in 4096
 * thumbprints): any argument that is not FLAG is the kid, and "--" ends the
 * options for a user who prefers to say so. A mistyped flag then fails as an
 * unknown kid, which names it. */
static int ctl_keys_kid_args(int argc, char **argv, const char *flag, const char **ret_kid, int *ret_flag)
{
	const char *kid = NULL;
	int flagged = 0, operands_only = 0;

	for (int i = 0; i < argc; i++) {
		if (!operands_only && strcmp(argv[i], "--") == 0) {
			operands_only = 1;
		} else if (!operands_only && flag && strcmp(argv[i], flag) == 0 && !flagged) {
			flagged = 1;
		} else if (kid == NULL) {
			kid = argv[i];
		} else {
			fprintf(stderr, "hsmjwtctl: unexpected argument `%.*s'\n", CTL_SHOWN_MAX, argv[i]);
			return -1;
		}
	}
	if (kid == NULL)
		return -1;
	*ret_kid = kid;
	if (ret_flag)
		*ret_flag = flagged;
	return 0;
}

int cmd_keys_retire(struct ctl *ctl, int argc, char **argv)
{
	char at[CTL_TIME_MAX];
	const struct keys_entry *entry;
	const char *kid, *alg;
	struct keystate_policy policy;
	struct keys *keys = NULL;
	struct keys_change change;
	int64_t now;
	int status = 1, r;

	if (ctl_keys_kid_args(argc, argv, NULL, &kid, NULL) < 0) {
		fprintf(stderr, "usage: hsmjwtctl keys retire KID\n");
		return 2;
	}
	now = (int64_t)time(NULL);
	if (ctl_keys_find(ctl, kid, now, &keys, &entry) < 0)
		return 1;
	alg = jws_alg_name(entry->hsm.alg);
	r = keys_retire(ctl->hsm, &ctl->cfg, kid, now, &change);
	switch (r) {
	case 0:
		keys_policy(&ctl->cfg, &policy);
		printf("retired %s (%s): verifying only; it may be destroyed after %s\n", kid, alg,
		       ctl_time(keystate_destroy_after(&change.record, &policy), at));
		status = 0;
		break;
	case -EALREADY:
		printf("%s is already retired\n", kid);
		status = 0;
		break;
	case -EBUSY:
		fprintf(stderr, "hsmjwtctl: %s signs %s; rotate first (keys rotate --alg %s --immediate)\n", kid, alg,
			alg);
		break;
	case -ENOENT:   /* destroyed by another process since the set was read */
		ctl_keys_unknown(kid);
		break;
	default:
		fprintf(stderr, "hsmjwtctl: retiring %s failed (error %d, see the log line above)\n", kid, r);
		break;
	}
	keys_release(keys);
	return status;
}

int cmd_keys_destroy(struct ctl *ctl, int argc, char **argv)
{
	char at[CTL_TIME_MAX], retired[CTL_TIME_MAX];
	const struct keys_entry *entry;
	const char *kid = NULL, *alg;
	struct keystate_policy policy;
	struct keys *keys = NULL;
	int64_t now, safe_at = 0, live_until;
	int status = 1, force = 0, signing, r;

	if (ctl_keys_kid_args(argc, argv, "--force", &kid, &force) < 0) {
		fprintf(stderr, "usage: hsmjwtctl keys destroy KID [--force]\n");
		return 2;
	}
	now = (int64_t)time(NULL);
	if (ctl_keys_find(ctl, kid, now, &keys, &entry) < 0)
		return 1;
	alg = jws_alg_name(entry->hsm.alg);
	signing = keys_signer(keys, entry->hsm.alg) == entry;
	keys_policy(&ctl->cfg, &policy);
	live_until = entry->state.state == KEYSTATE_RETIRED ? keystate_destroy_after(&entry->state, &policy) : 0;
	r = keys_destroy(ctl->hsm, &ctl->cfg, kid, force, now, &safe_at);
	if (r == -EBUSY && safe_at == INT64_MAX) {
		fprintf(stderr, "hsmjwtctl: %s signs %s; rotate first (keys rotate --alg %s --immediate), then destroy "
				"it once the tokens it signed have expired; --force destroys it anyway\n", kid, alg, alg);
		goto out;
	}
	if (r == -EBUSY) {
		fprintf(stderr, "hsmjwtctl: %s may still have live tokens until %s (retired at %s + max_ttl %" PRId64
				" + leeway %" PRId64 "); --force destroys it anyway\n",
			kid, ctl_time(safe_at, at), ctl_time(entry->state.retired_at, retired), ctl->cfg.max_ttl,
			ctl->cfg.leeway);
		goto out;
	}
	if (r == -ENOENT) {   /* destroyed by another process since the set was read */
		ctl_keys_unknown(kid);
		goto out;
	}
	if (r < 0) {
		fprintf(stderr, "hsmjwtctl: destroying %s failed (error %d, see the log line above)\n", kid, r);
		goto out;
	}
	if (signing)
		fprintf(stderr, "hsmjwtctl: warning: %s signed %s: the tokens it signed no longer verify, and %s has no "
				"signing key until hsmjwtctl keys generate --alg %s (a daemon that signs %s makes one "
				"itself)\n", kid, alg, alg, alg, alg);
	else if (live_until > now)
		fprintf(stderr, "hsmjwtctl: warning: tokens %s signed may have been live until %s: they no longer "
				"verify\n", kid, ctl_time(live_until, at));
	printf("destroyed %s\n", kid);
	status = 0;
out:
	keys_release(keys);
	return status;
}

int cmd_jwks(struct ctl *ctl, int argc, char **argv)
{
	struct keys *keys = NULL;
	json_t *doc;
	int r;

	if (argc != 0) {
		fprintf(stderr, "hsmjwtctl: jwks takes no arguments\n");
		return 2;
	}
	if (ctl_load_keys(ctl, (int64_t)time(NULL), &keys) < 0)
		return 1;
	doc = json_loads(keys->jwks, 0, NULL);
	r = doc ? ctl_print_json(doc) : 1;
	json_decref(doc);
	keys_release(keys);
	return r;
}

void ctl_keys_status(const struct ctl *ctl, const struct keys *keys)
{
	char at[CTL_TIME_MAX];
	size_t per_state[KEYSTATE_RETIRED + 1] = { 0 };

	for (size_t i = 0; i < keys->count; i++)
		if (keys->entries[i].state.state >= KEYSTATE_NEXT && keys->entries[i].state.state <= KEYSTATE_RETIRED)
			per_state[keys->entries[i].state.state]++;
	printf("keys:         %zu (next %zu, active %zu, retired %zu)\n", keys->count, per_state[KEYSTATE_NEXT],
	       per_state[KEYSTATE_ACTIVE], per_state[KEYSTATE_RETIRED]);
	for (size_t a = 0; a < ctl->cfg.algorithm_count; a++) {
		enum jws_alg alg = ctl->cfg.algorithms[a];
		const struct keys_entry *signer = keys_signer(keys, alg), *next = NULL;

		for (size_t i = 0; i < keys->count; i++) {
			const struct keys_entry *e = &keys->entries[i];
			if (e->hsm.alg == alg && e->state.state == KEYSTATE_NEXT &&
			    (next == NULL || e->state.activate_at < next->state.activate_at))
				next = e;
		}
		if (signer != NULL)
			printf("  %-6s %s %s since %s\n", jws_alg_name(alg), signer->hsm.kid,
			       keystate_name(signer->state.state), ctl_time(signer->state.activate_at, at));
		else
			printf("  %-6s (no signing key: hsmjwtctl keys generate --alg %s, or start the daemon)\n",
			       jws_alg_name(alg), jws_alg_name(alg));
		if (next != NULL)
			printf("  %-6s %s next, activates at %s\n", "", next->hsm.kid, ctl_time(next->state.activate_at, at));
	}
}
