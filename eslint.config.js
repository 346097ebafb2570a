import neostandard, { plugins } from 'neostandard'

// neostandard's own typescript-eslint (no second copy to keep in step)
const tseslint = plugins['typescript-eslint']

export default [
  ...neostandard({ ts: true, ignores: ['dist/**', 'node_modules/**', 'data/**', '.tap/**', 'coverage/**'] }),
  // the task and outbox stores are asynchronous: no promise is left floating (a rejection nobody
  // handles), and none is given where a callback's result is ignored (an event listener)
  {
    files: ['services/**/*.ts', 'plugins/**/*.ts', 'routes/**/*.ts'],
    languageOptions: { parser: tseslint.parser, parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    plugins: { '@typescript-eslint': tseslint.plugin },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: { arguments: true, attributes: false, properties: false, returns: false, variables: false, inheritedMethods: false } }]
    }
  }
]
