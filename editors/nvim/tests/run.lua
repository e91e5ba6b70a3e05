-- Headless test runner: nvim --headless -u NONE -l tests/run.lua [spec ...]
-- Each *_spec.lua returns { ["behaviour"] = function() ... end }; failures exit non-zero.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)")
local root = vim.fn.fnamemodify(here .. "..", ":p")
vim.opt.runtimepath:prepend(root)
vim.cmd("runtime plugin/diffill.lua")

local specs = _G.arg and #_G.arg > 0 and _G.arg or vim.fn.glob(here .. "*_spec.lua", false, true)
local failed, passed = 0, 0
for _, file in ipairs(specs) do
  local tests = dofile(file)
  local names = vim.tbl_keys(tests)
  table.sort(names)
  for _, name in ipairs(names) do
    local ok, err = xpcall(tests[name], debug.traceback)
    if ok then
      passed = passed + 1
      io.stdout:write(("ok - %s: %s\n"):format(vim.fn.fnamemodify(file, ":t"), name))
    else
      failed = failed + 1
      io.stdout:write(("not ok - %s: %s\n%s\n"):format(vim.fn.fnamemodify(file, ":t"), name, err))
    end
  end
end
io.stdout:write(("%d passed, %d failed\n"):format(passed, failed))
io.stdout:flush()
os.exit(failed == 0 and 0 or 1)
