#include "hsmjwt/service.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "hsmjwt/log.h"
#include "hsmjwt/pin.h"

extern char **environ;

int service_load_config(struct config *cfg, const char *path)
{
	char err[512];
	int r;

	r = config_load(cfg, path, environ, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "hsmjwt: configuration error: %s\n", err);
		return r;
	}
	log_set_level(cfg->log_level);
	return 0;
}

int service_open_token(const struct config *cfg, struct hsm **ret_hsm)
{
	char *pin = NULL;
	size_t pin_len = 0;
	int r;

	r = pin_read(cfg, &pin, &pin_len);
	if (r < 0 && r != -ENOENT) {
		log_error("\"cannot read the PIN\" pin_file=%s error=%d", cfg->pin_file ? cfg->pin_file : "-", r);
		return r;
	}
	r = hsm_open(cfg->pkcs11_module, cfg->token, pin, pin_len, ret_hsm);
	pin_free(pin, pin_len);
	return r;
}
