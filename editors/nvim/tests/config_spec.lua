local config = require("diffill.config")

return {
  ["defaults apply without setup()"] = function()
    assert(config.options.cmd[1] == "diffill")
    assert(config.options.keymaps.accept == "<Tab>")
  end,
  ["setup merges nested options over the defaults"] = function()
    require("diffill").setup({ ghost_text = { debounce_ms = 40 }, init_options = { maxTokens = 8 } })
    assert(config.options.ghost_text.debounce_ms == 40)
    assert(config.options.ghost_text.hl_group == "Comment", "siblings keep their defaults")
    assert(config.options.init_options.maxTokens == 8)
    require("diffill").setup({})
    assert(config.options.ghost_text.debounce_ms == 150, "a new setup starts from the defaults")
  end,
  ["plugin/ defines the commands"] = function()
    for _, name in ipairs({ "DiffillStart", "DiffillStop", "DiffillStatus", "DiffillSuggest",
                            "DiffillRewrite", "DiffillRefine" }) do
      assert(vim.fn.exists(":" .. name) == 2, name .. " is missing")
    end
  end,
  ["health check runs"] = function()
    require("diffill.health").check()
  end,
}
