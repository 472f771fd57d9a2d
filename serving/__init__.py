"""serving: the HTTP app that serves a ranking policy, the settings composed from every
package's section, and the ``clickloop`` command line."""
