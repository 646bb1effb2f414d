/* omni-kb — the knowledge base on the command line: `import DIR --db KB`
 * loads Markdown articles, `search TEXT --db KB` shows ranked matches. The
 * logic is lib/kb.c. */
#include "kb.h"

int main(int argc, char **argv)
{
    return kb_cli(argc - 1, argv + 1);
}
