/*
 * mdh-agent: the guest half of multidevs-harness's observations.
 *
 * Busybox can stat files, but only one process per batch and with names in its
 * output; a name holding a newline would break the host's parser, and a fork per
 * file is far too slow for 100,000 files under TCG.  This agent reads the paths
 * NUL-separated on stdin and answers by input index, so names never appear in its
 * output and one SSH round trip covers any number of files.
 *
 *   mdh-agent stat ROOT PASSES [THREADS]
 *                                S p i dev ino nlink mode | E p i errno,
 *                                then D i d_ino HEXNAME | DE i errno, END n
 *   mdh-agent read ROOT          R i HEX | RE i errno, END n
 *   mdh-agent harm ROOT          paths in pairs (a twin, then its twin on another
 *                                device): C/M/T/L/N/W/P/X records, END n
 *                                (see harm_pair and harm_dirs below)
 *   mdh-agent ops ROOT           input: OP PATH PATH2 triples, each NUL-terminated;
 *                                L i HEXNAME (readdir only), O i errno, END n
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#define READ_MAX 4096

static char **paths;
static size_t npaths;

static void read_paths(void)
{
	size_t cap = 0, len = 0;
	char *buf = NULL;
	ssize_t got;

	for (;;) {
		if (cap - len < 65536) {
			cap = cap ? cap * 2 : 1 << 20;
			buf = realloc(buf, cap);
			if (!buf) {
				perror("mdh-agent: realloc");
				exit(2);
			}
		}
		got = read(0, buf + len, cap - len - 1);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			perror("mdh-agent: read stdin");
			exit(2);
		}
		if (got == 0)
			break;
		len += (size_t)got;
	}
	if (len && buf[len - 1] != '\0')
		buf[len++] = '\0';
	for (size_t i = 0; i < len; i++)
		if (buf[i] == '\0')
			npaths++;
	paths = calloc(npaths ? npaths : 1, sizeof(*paths));
	if (!paths) {
		perror("mdh-agent: calloc");
		exit(2);
	}
	for (size_t i = 0, start = 0, n = 0; i < len; i++) {
		if (buf[i] == '\0') {
			paths[n++] = buf + start;
			start = i + 1;
		}
	}
}

static void put_hex(const unsigned char *data, size_t len)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++) {
		putchar(digits[data[i] >> 4]);
		putchar(digits[data[i] & 15]);
	}
}

struct stat_result {
	int err;
	struct stat st;
};

struct stat_job {
	size_t first, last;
	struct stat_result *out;
};

/*
 * Under cache=none the 9p client keeps no dentries, so lstat("dev05/file") walks
 * every component again.  Holding an O_PATH fd on the parent turns each stat into a
 * single-component walk; consecutive paths share parents (the host sends them depth
 * first), so one open serves a whole directory.  A parent that cannot be opened
 * yields its errno for the child, which is what a full path walk would report.
 */
static void *stat_range(void *arg)
{
	struct stat_job *job = arg;
	char parent[4096] = "";
	int parent_fd = AT_FDCWD, parent_err = 0;

	for (size_t i = job->first; i < job->last; i++) {
		const char *path = paths[i];
		const char *slash = strrchr(path, '/');
		const char *name = path;
		char dir[4096] = "";

		if (slash && (size_t)(slash - path) < sizeof(dir)) {
			memcpy(dir, path, (size_t)(slash - path));
			dir[slash - path] = '\0';
			name = slash + 1;
		}
		if (strcmp(dir, parent) != 0) {
			if (parent_fd != AT_FDCWD)
				close(parent_fd);
			parent_fd = AT_FDCWD;
			parent_err = 0;
			if (dir[0]) {
				parent_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
				if (parent_fd < 0) {
					parent_err = errno;
					parent_fd = AT_FDCWD;
				}
			}
			strcpy(parent, dir);
		}
		if (parent_err) {
			job->out[i].err = parent_err;
		} else if (fstatat(parent_fd, name, &job->out[i].st, AT_SYMLINK_NOFOLLOW) == 0) {
			job->out[i].err = 0;
		} else {
			job->out[i].err = errno;
		}
	}
	if (parent_fd != AT_FDCWD)
		close(parent_fd);
	return NULL;
}

static int cmd_stat(int passes, int threads)
{
	unsigned char *is_dir = calloc(npaths ? npaths : 1, 1);
	struct stat_result *res = calloc(npaths ? npaths : 1, sizeof(*res));
	pthread_t tid[64];
	struct stat_job jobs[64];

	if (!is_dir || !res)
		return 2;
	if (threads < 1)
		threads = 1;
	if (threads > 64)
		threads = 64;
	for (int p = 1; p <= passes; p++) {
		/* Several requests in flight let QEMU's 9p workers overlap the guest. */
		for (int t = 0; t < threads; t++) {
			jobs[t].first = npaths * (size_t)t / (size_t)threads;
			jobs[t].last = npaths * (size_t)(t + 1) / (size_t)threads;
			jobs[t].out = res;
			if (pthread_create(&tid[t], NULL, stat_range, &jobs[t]) != 0) {
				stat_range(&jobs[t]);
				tid[t] = 0;
			}
		}
		for (int t = 0; t < threads; t++)
			if (tid[t])
				pthread_join(tid[t], NULL);
		for (size_t i = 0; i < npaths; i++) {
			const struct stat *st = &res[i].st;

			if (res[i].err) {
				printf("E %d %zu %d\n", p, i, res[i].err);
				continue;
			}
			printf("S %d %zu %llu %llu %llu %u\n", p, i,
			       (unsigned long long)st->st_dev,
			       (unsigned long long)st->st_ino,
			       (unsigned long long)st->st_nlink,
			       (unsigned)st->st_mode);
			if (p == 1 && S_ISDIR(st->st_mode))
				is_dir[i] = 1;
		}
	}
	for (size_t i = 0; i < npaths; i++) {
		DIR *dir;
		struct dirent *ent;

		if (!is_dir[i])
			continue;
		dir = opendir(paths[i]);
		if (!dir) {
			printf("DE %zu %d\n", i, errno);
			continue;
		}
		errno = 0;
		while ((ent = readdir(dir)) != NULL) {
			if (!strcmp(ent->d_name, ".") || !strcmp(ent->d_name, ".."))
				continue;
			printf("D %zu %llu ", i, (unsigned long long)ent->d_ino);
			put_hex((const unsigned char *)ent->d_name, strlen(ent->d_name));
			putchar('\n');
		}
		if (errno)
			printf("DE %zu %d\n", i, errno);
		closedir(dir);
	}
	printf("END %zu\n", npaths);
	free(is_dir);
	free(res);
	return 0;
}

/*
 * Read up to size bytes of fd into buf (retrying on EINTR); *len is how many were
 * read.  Returns the last read()'s result: negative on an error, with errno set.
 */
static ssize_t read_prefix(int fd, unsigned char *buf, size_t size, size_t *len)
{
	ssize_t got = 0;

	*len = 0;
	while (*len < size) {
		got = read(fd, buf + *len, size - *len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		*len += (size_t)got;
	}
	return got;
}

static int cmd_read(void)
{
	unsigned char buf[READ_MAX];

	for (size_t i = 0; i < npaths; i++) {
		int fd = open(paths[i], O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		size_t len = 0;
		ssize_t got;

		if (fd < 0) {
			printf("RE %zu %d\n", i, errno);
			continue;
		}
		got = read_prefix(fd, buf, sizeof(buf), &len);
		if (got < 0) {
			printf("RE %zu %d\n", i, errno);
		} else {
			printf("R %zu ", i);
			put_hex(buf, len);
			putchar('\n');
		}
		close(fd);
	}
	printf("END %zu\n", npaths);
	return 0;
}

/* ---- harm: what colliding qids do to a guest with an inode cache ---- */

static const char *harm_root;

static void harm_fail(size_t i, const char *op)
{
	printf("X %zu %s %d\n", i, op, errno);
}

static void harm_lock(size_t i, int fd)
{
	printf("L %zu %d\n", i, flock(fd, LOCK_EX | LOCK_NB) == 0 ? 0 : errno);
}

/*
 * Open path i and report what it shows: its bytes through read(2) (C), through a
 * private read-only mapping (M), its mtime from fstat (T) and whether an exclusive
 * non-blocking flock is granted (L 0) or refused (L errno).  The fd stays open and
 * locked (returned) so the twin opened next meets a held file: an inode cache that
 * took the twin for this file then serves this file's pages, times and lock.
 * The held file (held != 0) is locked before it is read and the other one after:
 * the 9p client drops an inode's cached pages whenever a lock is asked for, so the
 * held file's pages must be read in after its lock, and the twin must be read
 * before its own lock attempt throws them away.
 */
static int harm_open(size_t i, int held)
{
	unsigned char buf[READ_MAX];
	size_t len = 0;
	ssize_t got = 0;
	struct stat st;
	int fd = open(paths[i], O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0) {
		harm_fail(i, "open");
		return -1;
	}
	if (held)
		harm_lock(i, fd);
	got = read_prefix(fd, buf, sizeof(buf), &len);
	if (got < 0) {
		harm_fail(i, "read");
	} else {
		printf("C %zu ", i);
		put_hex(buf, len);
		putchar('\n');
	}
	if (fstat(fd, &st) != 0) {
		harm_fail(i, "fstat");
	} else {
		printf("T %zu %lld\n", i, (long long)st.st_mtime);
		if (st.st_size > 0) {
			size_t maplen = st.st_size < READ_MAX ? (size_t)st.st_size : READ_MAX;
			void *map = mmap(NULL, maplen, PROT_READ, MAP_PRIVATE, fd, 0);

			if (map == MAP_FAILED) {
				harm_fail(i, "mmap");
			} else {
				printf("M %zu ", i);
				put_hex(map, maplen);
				putchar('\n');
				munmap(map, maplen);
			}
		} else {
			printf("M %zu \n", i);
		}
	}
	if (!held)
		harm_lock(i, fd);
	return fd;
}

static void harm_pair(size_t a, size_t b)
{
	int held = harm_open(a, 1);
	int other = harm_open(b, 0);

	if (other >= 0)
		close(other);
	if (held >= 0)
		close(held);
}

static void harm_list(size_t i, const char *tag, const char *dirpath)
{
	DIR *dir = opendir(dirpath);
	struct dirent *ent;

	if (!dir) {
		harm_fail(i, "opendir");
		return;
	}
	errno = 0;
	while ((ent = readdir(dir)) != NULL) {
		if (!strcmp(ent->d_name, ".") || !strcmp(ent->d_name, ".."))
			continue;
		printf("%s %zu ", tag, i);
		put_hex((const unsigned char *)ent->d_name, strlen(ent->d_name));
		putchar('\n');
	}
	if (errno)
		harm_fail(i, "readdir");
	closedir(dir);
}

/*
 * With the cwd held in directory a, list its twin b (N, by absolute path), then say
 * where the cwd is (W, readlink /proc/self/cwd) and what "." lists (P).  A client
 * that took b for a's inode moves a's dentry, and the cwd with it, to b.
 */
static void harm_dirs(size_t a, size_t b)
{
	char other[8192], cwd[4096];
	ssize_t len;

	snprintf(other, sizeof(other), "%s/%s", harm_root, paths[b]);
	if (chdir(paths[a]) != 0) {
		harm_fail(a, "chdir");
		return;
	}
	harm_list(b, "N", other);
	len = readlink("/proc/self/cwd", cwd, sizeof(cwd));
	if (len < 0) {
		harm_fail(a, "readlink");
	} else {
		printf("W %zu ", a);
		put_hex((const unsigned char *)cwd, (size_t)len);
		putchar('\n');
	}
	harm_list(a, "P", ".");
	if (chdir(harm_root) != 0)
		harm_fail(a, "chdir");
}

static int cmd_harm(const char *root)
{
	struct stat st;

	harm_root = root;
	for (size_t i = 0; i + 1 < npaths; i += 2) {
		if (lstat(paths[i], &st) != 0) {
			harm_fail(i, "lstat");
			continue;
		}
		if (S_ISDIR(st.st_mode))
			harm_dirs(i, i + 1);
		else
			harm_pair(i, i + 1);
	}
	printf("END %zu\n", npaths);
	return 0;
}

/*
 * One filesystem operation per request, answered with its errno (0: success), so
 * the host can judge each operation on each kind of target by itself.  Requests
 * are triples on stdin (OP, PATH, PATH2; PATH2 empty where the operation takes one
 * path), NUL-terminated like the stat input, so any name passes.  Operations run in
 * input order: the host orders them so that none depends on another's outcome.
 */
static int ops_readdir(size_t i, const char *path)
{
	DIR *dir = opendir(path);
	struct dirent *ent;

	if (!dir)
		return errno;
	errno = 0;
	while ((ent = readdir(dir)) != NULL) {
		if (!strcmp(ent->d_name, ".") || !strcmp(ent->d_name, ".."))
			continue;
		printf("L %zu ", i);
		put_hex((const unsigned char *)ent->d_name, strlen(ent->d_name));
		putchar('\n');
	}
	closedir(dir);
	return errno;
}

static int ops_fd(int fd)
{
	if (fd < 0)
		return errno;
	close(fd);
	return 0;
}

static int ops_one(size_t i, const char *op, const char *path, const char *path2)
{
	char buf[256];
	struct stat st;
	DIR *dir;

	if (!strcmp(op, "stat"))
		return stat(path, &st) ? errno : 0;
	if (!strcmp(op, "lstat"))
		return lstat(path, &st) ? errno : 0;
	if (!strcmp(op, "open"))
		return ops_fd(open(path, O_RDONLY | O_CLOEXEC));
	if (!strcmp(op, "opendir")) {
		dir = opendir(path);
		if (!dir)
			return errno;
		closedir(dir);
		return 0;
	}
	if (!strcmp(op, "readdir"))
		return ops_readdir(i, path);
	if (!strcmp(op, "readlink"))
		return readlink(path, buf, sizeof(buf)) < 0 ? errno : 0;
	if (!strcmp(op, "unlink"))
		return unlink(path) ? errno : 0;
	if (!strcmp(op, "mkdir"))
		return mkdir(path, 0755) ? errno : 0;
	if (!strcmp(op, "rmdir"))
		return rmdir(path) ? errno : 0;
	if (!strcmp(op, "creat"))
		return ops_fd(open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
	if (!strcmp(op, "rename"))
		return rename(path, path2) ? errno : 0;
	if (!strcmp(op, "link"))
		return link(path, path2) ? errno : 0;
	if (!strcmp(op, "symlink"))  /* PATH2 is the link's text, PATH the new name */
		return symlink(path2, path) ? errno : 0;
	if (!strcmp(op, "chmod"))
		return chmod(path, 0640) ? errno : 0;
	if (!strcmp(op, "truncate"))
		return truncate(path, 1) ? errno : 0;
	if (!strcmp(op, "getxattr"))
		return lgetxattr(path, "user.mdh", buf, sizeof(buf)) < 0 ? errno : 0;
	if (!strcmp(op, "setxattr"))
		return lsetxattr(path, "user.mdh", "set", 3, 0) ? errno : 0;
	return -1;
}

static int cmd_ops(void)
{
	if (npaths % 3) {
		fprintf(stderr, "mdh-agent: ops input has %zu fields, not triples\n", npaths);
		return 2;
	}
	for (size_t i = 0; i < npaths / 3; i++) {
		int err = ops_one(i, paths[3 * i], paths[3 * i + 1], paths[3 * i + 2]);

		if (err < 0) {
			fprintf(stderr, "mdh-agent: unknown operation %s\n", paths[3 * i]);
			return 2;
		}
		printf("O %zu %d\n", i, err);
	}
	printf("END %zu\n", npaths / 3);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: mdh-agent stat ROOT PASSES | mdh-agent read ROOT\n");
		return 2;
	}
	if (chdir(argv[2]) != 0) {
		fprintf(stderr, "mdh-agent: chdir %s: %s\n", argv[2], strerror(errno));
		return 2;
	}
	/* Full buffering: 100,000 records must not cost 100,000 writes over SSH. */
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	read_paths();
	if (!strcmp(argv[1], "stat") && (argc == 4 || argc == 5))
		return cmd_stat(atoi(argv[3]), argc == 5 ? atoi(argv[4]) : 1);
	if (!strcmp(argv[1], "read") && argc == 3)
		return cmd_read();
	if (!strcmp(argv[1], "harm") && argc == 3)
		return cmd_harm(argv[2]);
	if (!strcmp(argv[1], "ops") && argc == 3)
		return cmd_ops();
	fprintf(stderr, "mdh-agent: unknown command %s\n", argv[1]);
	return 2;
}
